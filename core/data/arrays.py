"""Reading and checking the generic format: one .npz, one array per modality, plus labels.

Torch-free. Every check names the file and the array that is wrong, so a user can fix the data
without reading code.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from core.errors import DataError
from core.spec import RESERVED_KEYS, DatasetSpec, TaskKind
from storage.store import ObjectTooLarge, read_uri

SPLIT_VALUES = ("train", "val", "test")
MAX_CLASSES = 10_000  # the default cap on class ids: a model allocates memory per class
MAX_ARRAYS = 64  # members of one .npz: modalities plus label, split and class_names


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


def refuse_oversize(source: str, size: int, max_bytes: int | None) -> None:
    """A DataError naming ``source`` when ``size`` is over ``max_bytes``."""
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


def read_npz(source: str, payload: bytes | Path, *, max_array_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Open an .npz (bytes or a file) without pickles: object arrays are refused, never executed.

    Every member must be an ``.npy`` array; their headers are read first, so a file whose arrays
    would take more than ``max_array_bytes`` once decompressed is refused before any is loaded.
    """
    with io.BytesIO(payload) if isinstance(payload, bytes) else Path(payload).open("rb") as handle:
        if handle.read(2) != b"PK":
            raise DataError(source, "not a valid .npz file (not a zip archive)")
        handle.seek(0)
        try:
            _check_members(source, handle, max_array_bytes)
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except ValueError as exc:
            raise DataError(source, f"not a readable .npz without pickled objects ({exc})") from exc
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
            raise DataError(source, f"not a valid .npz file ({exc})") from exc


def _check_members(source: str, handle: IO[bytes], max_array_bytes: int | None) -> None:
    """Refuse non-array members, object arrays and (with a limit) too many bytes, from the headers."""
    total = 0
    with zipfile.ZipFile(handle) as archive:
        members = archive.infolist()
        if len(members) > MAX_ARRAYS:
            raise DataError(source, f"holds {len(members)} arrays; the limit is {MAX_ARRAYS}")
        for info in members:
            if not info.filename.endswith(".npy"):
                raise DataError(source, f"member {info.filename[:80]!r} is not an .npy array")
            name = info.filename[:-4][:80]
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            if dtype.hasobject:
                objects = f"array {name!r} holds Python objects; not a readable .npz without pickled objects"
                raise DataError(source, objects)
            total += math.prod(shape) * dtype.itemsize
            if max_array_bytes is not None and total > max_array_bytes:
                raise DataError(
                    source, f"array {name!r}: the arrays take over {max_array_bytes} bytes once decompressed"
                )


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
    count = label.shape[0] if label.ndim else 0
    if count != n:
        raise DataError(source, f"array 'label' has {count} samples, the modalities have {n}")
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
    """Check ``modalities`` (numeric, 2-D or 3-D, finite, equal sample counts, at least 10) and the
    label (for ``task``), split and class names; every problem names the array."""
    missing = [name for name in modalities if name not in arrays]
    if missing:
        present = sorted(set(arrays) - RESERVED_KEYS)
        raise DataError(source, f"modality {missing} not in the file; it has {present}")
    checked = {name: _check_modality(source, name, arrays[name]) for name in modalities}
    counts = {name: array.shape[0] for name, array in checked.items()}
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
    return CheckedArrays(checked, checked_label, checked_split, class_names)


def load_raw(
    spec: DatasetSpec,
    task: TaskKind,
    *,
    max_bytes: int | None = None,
    max_classes: int = MAX_CLASSES,
    read: DataReader = read_local_or_s3,
) -> RawDataset:
    """Read (through ``read``) and check the dataset a spec names; refuse a file over ``max_bytes``
    (compressed or not) or a class id >= ``max_classes``."""
    if spec.name:
        source, payload = _builtin_bytes(spec.name)
    else:
        source = dataset_ref(spec)
        payload = read(source, max_bytes=max_bytes)
    refuse_oversize(source, len(payload), max_bytes)
    arrays = read_npz(source, payload, max_array_bytes=max_bytes)
    wanted = [*spec.primary, *spec.auxiliary]
    if spec.retrieval_target:
        wanted.append(spec.retrieval_target)
    checked = check_arrays(source, arrays, modalities=wanted, task=task, max_classes=max_classes)
    digest = hashlib.sha256(payload).hexdigest()
    return RawDataset(source, checked.modalities, checked.label, checked.split, checked.class_names, digest)
