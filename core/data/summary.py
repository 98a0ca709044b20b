"""What an uploaded .npz holds, checked without a spec: the checks of ``core.data.arrays`` applied
to every array of the file, and the summary the service stores and shows. Torch-free."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.data.arrays import MAX_CLASSES, read_npz, refuse_oversize
from core.data.checks import SPLIT_VALUES, CheckedArrays, check_arrays
from core.data.prepare import is_labelled
from core.errors import DataError
from core.spec import MODALITY_NAME, RESERVED_KEYS, TaskKind
from storage.objects import digest_file

LabelKind = Literal["classes", "multilabel", "continuous"]
#: The task a label of each kind is checked as when no spec says (an upload).
_TASK_OF_KIND: dict[LabelKind | None, TaskKind] = {
    "classes": "classification",
    "multilabel": "multilabel",
    "continuous": "regression",
    None: "retrieval",
}


@dataclass(frozen=True)
class FileSummary:
    """What an uploaded file holds, as stored and shown: per-sample shapes and dtypes of each
    modality, the label, the split sizes, the size in bytes and the SHA-256."""

    n_samples: int
    modalities: dict[str, dict[str, Any]]
    label: dict[str, Any] | None
    splits: dict[str, int] | None
    size_bytes: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        """The summary as a JSON document (the database column, the API's ``summary``)."""
        return {"modalities": self.modalities, "label": self.label, "splits": self.splits}


def label_kind(label: np.ndarray | None) -> LabelKind | None:
    """How a file's label reads without a spec: integer class ids, 0/1 rows, or other numbers."""
    if label is None:
        return None
    if label.dtype.kind == "f":
        finite = label[np.isfinite(label)]
        return "multilabel" if label.ndim == 2 and np.isin(finite, (0.0, 1.0)).all() else "continuous"
    return "multilabel" if label.ndim == 2 else "classes"  # other dtypes: the class check names them


def summarise_npz(
    source: str, path: Path, *, max_bytes: int | None = None, max_classes: int = MAX_CLASSES
) -> FileSummary:
    """Check a whole file without a spec, as an upload must pass: every array but label, split and
    class_names is a modality with a valid name; the label is checked as its kind reads."""
    size, sha256 = digest_file(path)
    refuse_oversize(source, size, max_bytes)
    arrays = read_npz(source, path, max_array_bytes=max_bytes)
    names = sorted(set(arrays) - RESERVED_KEYS)
    for name in names:
        if not re.fullmatch(MODALITY_NAME, name):
            raise DataError(
                source, f"array {name[:80]!r} is not a modality name (a letter, then letters, digits or _; 64 at most)"
            )
    if not names:
        raise DataError(source, "holds no modality array (only label, split or class_names)")
    kind = label_kind(arrays.get("label"))
    checked = check_arrays(source, arrays, modalities=names, task=_TASK_OF_KIND[kind], max_classes=max_classes)
    modalities = {name: {"shape": list(arrays[name].shape[1:]), "dtype": str(arrays[name].dtype)} for name in names}
    n_samples = int(arrays[names[0]].shape[0])
    splits = None
    if checked.split is not None:
        splits = {value: int((checked.split == value).sum()) for value in SPLIT_VALUES}
    return FileSummary(n_samples, modalities, _label_summary(kind, checked), splits, size, sha256)


def _label_summary(kind: LabelKind | None, checked: CheckedArrays) -> dict[str, Any] | None:
    label = checked.label
    if kind is None or label is None:
        return None
    summary: dict[str, Any] = {
        "kind": kind,
        "shape": list(label.shape[1:]),
        "labelled": int(is_labelled(label).sum()),
    }
    if kind == "classes":
        summary["classes"] = max(int(label.max()) + 1, len(checked.class_names or []))
    return summary
