"""The checks of the generic format's arrays: modalities, label, split and class names.

Torch-free. Every check names the file and the array that is wrong, so a user can fix the data
without reading code; all of them run before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import DataError
from core.spec import RESERVED_KEYS, TaskKind

SPLIT_VALUES = ("train", "val", "test")


def checked_modality(source: str, name: str, array: np.ndarray, *, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A modality as float32: numeric, finite and finite once in float32. Its per-sample shape is
    ``shape`` when given (a student's inputs), else training's rule: 2-D (N, F) or 3-D (N, C, L),
    no empty dimension."""
    if array.dtype.kind not in "biuf":
        raise DataError(source, f"modality {name!r} must be numeric, got dtype {array.dtype}")
    if shape is not None:
        if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape:
            raise DataError(source, f"modality {name!r} must have per-sample shape {shape}, got shape {array.shape}")
    elif array.ndim not in (2, 3):
        raise DataError(source, f"modality {name!r} must be 2-D (N, F) or 3-D (N, C, L), got shape {array.shape}")
    elif 0 in array.shape[1:]:
        least = "one feature" if array.ndim == 2 else "one channel and one step"
        raise DataError(source, f"modality {name!r} has shape {array.shape}; every sample needs at least {least}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(source, f"modality {name!r} has non-finite values in {rows_with(~np.isfinite(array))} samples")
    with np.errstate(over="ignore"):
        values = array.astype(np.float32, copy=False)
    if not np.isfinite(values).all():  # finite float64 values beyond float32's range
        rows = rows_with(~np.isfinite(values))
        raise DataError(source, f"modality {name!r} has values beyond float32's range (3.4e38) in {rows} samples")
    return values


def rows_with(bad: np.ndarray) -> int:
    """How many samples (first axis) of a per-value mask hold at least one True."""
    return int(bad.reshape(len(bad), -1).any(axis=1).sum())


def _number(value: float) -> str:
    """A class id as the user wrote it, short when it is absurdly large."""
    return str(int(value)) if abs(value) < 1e15 else f"{float(value):.3g}"


def _check_label(source: str, task: TaskKind, label: np.ndarray, n: int, max_classes: int) -> np.ndarray:
    if label.ndim == 0:
        raise DataError(source, "array 'label' is 0-d; expected one value per sample")
    if label.shape[0] != n:
        raise DataError(source, f"array 'label' has {label.shape[0]} samples, the modalities have {n}")
    if label.dtype.kind not in "biuf":
        raise DataError(source, f"array 'label' must be numeric, got dtype {label.dtype}")
    if task == "classification":
        return _check_classes(source, label, max_classes)
    with np.errstate(over="ignore"):
        values = label.astype(np.float32)
    if np.isinf(values).any():
        raise DataError(source, "array 'label' has infinite values or values beyond float32's range (NaN: unlabelled)")
    if values.ndim not in (1, 2):
        raise DataError(source, f"array 'label' must be (N,) or (N, K), got shape {label.shape}")
    if values.ndim == 2 and not 0 < values.shape[1] <= max_classes:
        raise DataError(source, f"array 'label' has shape {label.shape}; expected 1 to {max_classes} columns")
    if task == "multilabel":
        finite = values[np.isfinite(values)]
        if values.ndim != 2 or not np.isin(finite, (0.0, 1.0)).all():
            raise DataError(source, "multilabel 'label' must be (N, K) of 0/1 (NaN rows: unlabelled)")
    if not np.isfinite(values).reshape(n, -1).all(axis=1).any():
        raise DataError(source, "array 'label' has no labelled sample")
    return values


def _check_classes(source: str, label: np.ndarray, max_classes: int) -> np.ndarray:
    """Class ids: integers in [-1, max_classes), checked on the raw values (a cast to int64 could wrap)."""
    with np.errstate(invalid="ignore"):
        whole = label.dtype.kind != "f" or bool(np.all(np.mod(label, 1) == 0))
    if label.ndim != 1 or not whole:
        raise DataError(source, "array 'label' must hold one integer class per sample (-1: unlabelled)")
    if label.max() >= max_classes:
        raise DataError(
            source, f"array 'label' has class id {_number(label.max())}; the limit is {max_classes} classes"
        )
    if label.min() < -1:
        raise DataError(source, "array 'label' has class ids below -1 (-1 marks an unlabelled sample)")
    classes = label.astype(np.int64)
    if (classes >= 0).sum() == 0:
        raise DataError(source, "array 'label' has no labelled sample")
    return classes


def require_two_classes(source: str, label: np.ndarray, rows: np.ndarray | None, where: str) -> None:
    """Classification needs at least two classes among the labelled training samples (``rows``)."""
    present = np.unique(label if rows is None else label[rows])
    present = present[present >= 0]
    if len(present) < 2:
        found = f"only class {present[0]}" if len(present) else "no class"
        raise DataError(
            source, f"array 'label': the labelled {where} hold {found}; classification needs at least 2 classes"
        )


def _strings(array: np.ndarray) -> np.ndarray:
    """A str or bytes array as str (bytes decoded as UTF-8, bad bytes replaced)."""
    return np.char.decode(array, "utf-8", "replace") if array.dtype.kind == "S" else array.astype(str)


def _check_split(source: str, split: np.ndarray, n: int) -> np.ndarray:
    if split.dtype.kind not in "US" or split.shape != (n,) or not np.isin(_strings(split), SPLIT_VALUES).all():
        raise DataError(source, f"array 'split' must be (N,) with values in {list(SPLIT_VALUES)}")
    split = _strings(split)
    absent = [name for name in ("train", "test") if name not in split]
    if absent:
        raise DataError(source, f"array 'split' names no {' and no '.join(absent)} sample (val may be left out)")
    return split


def _check_class_names(source: str, names: np.ndarray, max_classes: int) -> list[str]:
    if names.ndim != 1 or names.dtype.kind not in "USiu":
        raise DataError(source, f"array 'class_names' must be (K,) strings, got shape {names.shape} of {names.dtype}")
    if names.size > max_classes:
        raise DataError(source, f"array 'class_names' has {names.size} names; the limit is {max_classes} classes")
    return [str(value) for value in _strings(names).tolist()]


@dataclass(frozen=True)
class CheckedArrays:
    """A file's arrays after the checks: modalities as float32, label, split and class names."""

    modalities: dict[str, np.ndarray]
    label: np.ndarray | None
    split: np.ndarray | None
    class_names: list[str] | None


def check_arrays(
    source: str, arrays: dict[str, np.ndarray], *, modalities: list[str], task: TaskKind, max_classes: int
) -> CheckedArrays:
    """Check ``modalities`` (numeric, 2-D or 3-D, no empty dimension, finite, equal sample counts, at
    least 10) and the label (for ``task``), split and class names; every problem names the array."""
    missing = [name for name in modalities if name not in arrays]
    if missing:
        present = sorted(set(arrays) - RESERVED_KEYS)
        raise DataError(source, f"modality {missing} not in the file; it has {present}")
    checked = {name: checked_modality(source, name, arrays[name]) for name in modalities}
    counts = {name: array.shape[0] for name, array in checked.items()}
    if len(set(counts.values())) != 1:
        raise DataError(source, f"modalities have different sample counts: {counts}")
    n = next(iter(counts.values()))
    label, split, names = check_annotations(
        source, n, arrays.get("label"), arrays.get("split"), arrays.get("class_names"), task, max_classes
    )
    return CheckedArrays(checked, label, split, names)


def check_annotations(
    source: str,
    n: int,
    label: np.ndarray | None,
    split: np.ndarray | None,
    names: np.ndarray | None,
    task: TaskKind,
    max_classes: int,
) -> tuple[np.ndarray | None, np.ndarray | None, list[str] | None]:
    """Check a dataset's ``n`` samples' label (for ``task``), split and class names, whole (a sharded
    dataset's are checked once, joined): the checked label, split and names."""
    if n < 10:
        raise DataError(source, f"only {n} samples; at least 10 are needed to split and train")
    if label is None and task != "retrieval":
        raise DataError(source, f"array 'label' is required for task {task!r}")
    checked_label = None if label is None else _check_label(source, task, label, n, max_classes)
    checked_split = None if split is None else _check_split(source, split, n)
    class_names = None if names is None else _check_class_names(source, names, max_classes)
    if task == "classification" and checked_label is not None:
        n_classes = int(checked_label.max()) + 1
        if class_names is not None and len(class_names) < n_classes:
            raise DataError(source, f"array 'class_names' has {len(class_names)} names for {n_classes} classes")
        train = None if checked_split is None else np.flatnonzero(checked_split == "train")
        require_two_classes(source, checked_label, train, "samples" if train is None else "train samples")
    return checked_label, checked_split, class_names
