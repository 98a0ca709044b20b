"""What an uploaded dataset holds, checked without a spec, and the summary the service stores and
shows: an .npz with the checks of ``core.data.arrays`` applied to every array of the file, or a
sharded dataset (``core.data.shards``) through its first pass. Torch-free."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.data.arrays import MAX_CLASSES, read_npz, refuse_oversize
from core.data.checks import SPLIT_VALUES, CheckedArrays, check_annotations, check_arrays
from core.data.prepare import is_labelled
from core.data.shards import DEFAULT_CACHE_BYTES, ShardOpener, scan
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
    """What an uploaded dataset holds, as stored and shown: per-sample shapes and dtypes of each
    modality, the label, the split sizes, the size in bytes and the SHA-256 (of the file; of a
    sharded dataset's file list, names and sizes), and a sharded dataset's ``shards`` (layout, files)."""

    n_samples: int
    modalities: dict[str, dict[str, Any]]
    label: dict[str, Any] | None
    splits: dict[str, int] | None
    size_bytes: int
    sha256: str
    shards: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """The summary as a JSON document (the database column, the API's ``summary``)."""
        document = {"modalities": self.modalities, "label": self.label, "splits": self.splits}
        return document if self.shards is None else {**document, "shards": self.shards}


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
    _check_names(source, names)
    if not names:
        raise DataError(source, "holds no modality array (only label, split or class_names)")
    kind = label_kind(arrays.get("label"))
    checked = check_arrays(source, arrays, modalities=names, task=_TASK_OF_KIND[kind], max_classes=max_classes)
    modalities = {name: {"shape": list(arrays[name].shape[1:]), "dtype": str(arrays[name].dtype)} for name in names}
    n_samples = int(arrays[names[0]].shape[0])
    return FileSummary(n_samples, modalities, _label_summary(kind, checked), _splits(checked), size, sha256)


def summarise_shards(
    uri: str,
    opener: ShardOpener,
    *,
    max_bytes: int | None = None,
    max_classes: int = MAX_CLASSES,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> FileSummary:
    """Check a sharded dataset without a spec, through the first pass a job makes (layout, headers,
    per-sample shapes, the joined label, split and class names, each shard within ``max_bytes``):
    every array but the annotations is a modality. The modalities' values are read and checked by
    each job's streaming pass (a non-finite value fails the job naming its file), not here."""
    source, found = scan(uri, opener, modalities=None, max_bytes=max_bytes, cache_bytes=cache_bytes)
    _check_names(uri, source.modalities)
    kind = label_kind(found.label)
    label, split, names = check_annotations(
        uri, found.rows, found.label, found.split, found.class_names, _TASK_OF_KIND[kind], max_classes
    )
    checked = CheckedArrays({}, label, split, names)
    modalities = {
        name: {"shape": list(source.shapes[name]), "dtype": source.dtypes[name]} for name in source.modalities
    }
    sizes = source.file_sizes()
    listing = hashlib.sha256("".join(f"{key}\t{size}\n" for key, size in sizes.items()).encode()).hexdigest()
    shards = {"layout": source.layout, "files": len(sizes)}
    label_summary = _label_summary(kind, checked)
    return FileSummary(found.rows, modalities, label_summary, _splits(checked), sum(sizes.values()), listing, shards)


def _check_names(source: str, names: list[str]) -> None:
    for name in names:
        if not re.fullmatch(MODALITY_NAME, name):
            raise DataError(
                source, f"array {name[:80]!r} is not a modality name (a letter, then letters, digits or _; 64 at most)"
            )


def _splits(checked: CheckedArrays) -> dict[str, int] | None:
    if checked.split is None:
        return None
    return {value: int((checked.split == value).sum()) for value in SPLIT_VALUES}


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
