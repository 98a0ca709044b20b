"""Reading and checking the generic format: one .npz, one array per modality, plus labels.

Torch-free. Every check names the file and the array that is wrong, so a user can fix the data
without reading code.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

import numpy as np

from core.errors import DataError
from core.spec import DatasetSpec, TaskKind
from storage.store import ObjectTooLarge, read_uri

SPLIT_VALUES = ("train", "val", "test")
MAX_CLASSES = 10_000  # the default cap on class ids: a model allocates memory per class


@dataclass(frozen=True)
class RawDataset:
    """The arrays of one dataset as read and checked; labels not yet masked or split."""

    source: str
    modalities: dict[str, np.ndarray]  # float32; (N, F) vectors or (N, C, L) sequences
    label: np.ndarray | None  # int64 (N,) for classes, float32 (N,) or (N, K) otherwise
    split: np.ndarray | None  # str (N,) in SPLIT_VALUES: some train and test rows, val optional
    class_names: list[str] | None
    sha256: str  # of the file as read: a checkpoint is only resumed on the same data


def _builtin_bytes(name: str) -> tuple[str, bytes]:
    package = resources.files("core.data.builtin")
    payload = package.joinpath(f"{name}.npz").read_bytes()
    expected = json.loads(package.joinpath("checksums.json").read_text())[f"{name}.npz"]
    if hashlib.sha256(payload).hexdigest() != expected:
        raise DataError(f"built-in {name}.npz", "checksum mismatch: the shipped file is corrupted")
    return f"built-in dataset {name}", payload


def _refuse_oversize(source: str, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise DataError(source, f"the data is {size} bytes, over the limit of {max_bytes} bytes")


class DataReader(Protocol):
    """Reads the data a spec names by reference: its ``uri``, or ``dataset:<id>`` for an uploaded one."""

    def __call__(self, ref: str, *, max_bytes: int | None) -> bytes:
        """The file's bytes; DataError for data that cannot be had, StorageError for an outage."""


def dataset_ref(spec: DatasetSpec) -> str:
    """The reference a reader resolves: ``dataset:<id>`` for an uploaded dataset, else the ``uri``."""
    return f"dataset:{spec.id}" if spec.id is not None else str(spec.uri)


def read_local_or_s3(
    ref: str,
    *,
    max_bytes: int | None,
    endpoint_url: str | None = None,
    max_attempts: int = 5,
    timeout_s: float = 10.0,
) -> bytes:
    """The reader of a machine's own files and S3 objects (``mmkd train``; the worker wraps it).

    The size is checked before a byte is read. Network failures stay StorageError (retried by
    the worker); everything else is a DataError naming ``ref``.
    """
    if ref.startswith("dataset:"):
        raise DataError(ref, "an uploaded dataset is read by the mmkd service; locally, name its file in dataset.uri")
    try:
        return read_uri(
            ref, max_bytes=max_bytes, endpoint_url=endpoint_url, max_attempts=max_attempts, timeout_s=timeout_s
        )
    except FileNotFoundError as exc:
        raise DataError(ref, "no such file or object (or no permission to read it)") from exc
    except ObjectTooLarge as exc:
        raise DataError(ref, f"the data is {exc}") from exc
    except (ValueError, IsADirectoryError, PermissionError) as exc:
        raise DataError(ref, f"cannot be read: {exc}") from exc


def read_npz(source: str, payload: bytes) -> dict[str, np.ndarray]:
    """Open an .npz without pickles (object arrays are refused, never executed)."""
    if not payload.startswith(b"PK"):
        raise DataError(source, "not a valid .npz file (not a zip archive)")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        raise DataError(source, f"not a readable .npz without pickled objects ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise DataError(source, f"not a valid .npz file ({exc})") from exc


def _check_modality(source: str, name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataError(source, f"modality {name!r} must be numeric, got dtype {array.dtype}")
    if array.ndim not in (2, 3):
        raise DataError(source, f"modality {name!r} must be 2-D (N, F) or 3-D (N, C, L), got shape {array.shape}")
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).any(axis=tuple(range(1, values.ndim))).sum())
        raise DataError(source, f"modality {name!r} has non-finite values in {bad} samples")
    return values


def _check_label(source: str, task: TaskKind, label: np.ndarray, n: int, max_classes: int) -> np.ndarray:
    if label.shape[0] != n:
        raise DataError(source, f"array 'label' has {label.shape[0]} samples, the modalities have {n}")
    if label.dtype.kind not in "biuf":
        raise DataError(source, f"array 'label' must be numeric, got dtype {label.dtype}")
    if task == "classification":
        if label.ndim != 1 or (label.dtype.kind == "f" and not np.all(np.mod(label, 1) == 0)):
            raise DataError(source, "array 'label' must hold one integer class per sample (-1: unlabelled)")
        top = int(label.max())  # checked on the raw values: a cast to int64 could wrap a huge id
        if top >= max_classes:
            raise DataError(source, f"array 'label' has class id {top}; the limit is {max_classes} classes")
        classes = label.astype(np.int64)
        if (classes < -1).any():
            raise DataError(source, "array 'label' has class ids below -1 (-1 marks an unlabelled sample)")
        if (classes >= 0).sum() == 0:
            raise DataError(source, "array 'label' has no labelled sample")
        return classes
    values = label.astype(np.float32)
    if np.isinf(values).any():
        raise DataError(source, "array 'label' has infinite values (NaN marks an unlabelled sample)")
    if values.ndim not in (1, 2):
        raise DataError(source, f"array 'label' must be (N,) or (N, K), got shape {label.shape}")
    if task == "multilabel":
        finite = values[np.isfinite(values)]
        if values.ndim != 2 or not np.isin(finite, (0.0, 1.0)).all():
            raise DataError(source, "multilabel 'label' must be (N, K) of 0/1 (NaN rows: unlabelled)")
    return values


def _check_split(source: str, split: np.ndarray, n: int) -> np.ndarray:
    split = split.astype(str)
    if split.shape != (n,) or not np.isin(split, SPLIT_VALUES).all():
        raise DataError(source, f"array 'split' must be (N,) with values in {list(SPLIT_VALUES)}")
    absent = [name for name in ("train", "test") if name not in split]
    if absent:
        raise DataError(source, f"array 'split' names no {' and no '.join(absent)} sample (val may be left out)")
    return split


def load_raw(
    spec: DatasetSpec,
    task: TaskKind,
    *,
    max_bytes: int | None = None,
    max_classes: int = MAX_CLASSES,
    read: DataReader = read_local_or_s3,
) -> RawDataset:
    """Read (through ``read``) and check the dataset a spec names; refuse a file over ``max_bytes``
    or a class id >= ``max_classes``."""
    if spec.name:
        source, payload = _builtin_bytes(spec.name)
    else:
        source = dataset_ref(spec)
        payload = read(source, max_bytes=max_bytes)
    _refuse_oversize(source, len(payload), max_bytes)
    arrays = read_npz(source, payload)
    wanted = [*spec.primary, *spec.auxiliary]
    if spec.retrieval_target:
        wanted.append(spec.retrieval_target)
    missing = [name for name in wanted if name not in arrays]
    if missing:
        present = sorted(set(arrays) - {"label", "split", "class_names"})
        raise DataError(source, f"modality {missing} not in the file; it has {present}")
    modalities = {name: _check_modality(source, name, arrays[name]) for name in wanted}
    counts = {name: array.shape[0] for name, array in modalities.items()}
    if len(set(counts.values())) != 1:
        raise DataError(source, f"modalities have different sample counts: {counts}")
    n = next(iter(counts.values()))
    if n < 10:
        raise DataError(source, f"only {n} samples; at least 10 are needed to split and train")
    label = arrays.get("label")
    if label is None and task != "retrieval":
        raise DataError(source, f"array 'label' is required for task {task!r}")
    checked_label = None if label is None else _check_label(source, task, label, n, max_classes)
    split = arrays.get("split")
    checked_split = None if split is None else _check_split(source, split, n)
    names = arrays.get("class_names")
    if names is not None and names.size > max_classes:
        raise DataError(source, f"array 'class_names' has {names.size} names; the limit is {max_classes} classes")
    class_names = None if names is None else [str(value) for value in names.tolist()]
    digest = hashlib.sha256(payload).hexdigest()
    return RawDataset(source, modalities, checked_label, checked_split, class_names, digest)
