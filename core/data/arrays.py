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
from collections.abc import Collection
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from core.data.checks import check_arrays
from core.errors import DataError, one_line
from core.spec import DatasetSpec, TaskKind
from storage.store import ObjectTooLarge, read_uri

MAX_CLASSES = 10_000  # the default cap on class ids: a model allocates memory per class
MAX_ARRAYS = 64  # members of one .npz: modalities plus label, split and class_names
MAX_DEFLATE_RATIO = 1032  # deflate never expands data more than this: a bound from the compressed size


@dataclass(frozen=True)
class RawDataset:
    """The arrays of one dataset as read and checked; labels not yet masked or split."""

    source: str
    modalities: dict[str, np.ndarray]  # float32; (N, F) vectors or (N, C, L) sequences
    label: np.ndarray | None  # int64 (N,) for classes, float32 (N,) or (N, K) otherwise
    split: np.ndarray | None  # str (N,) in SPLIT_VALUES: some train and test rows, val optional
    class_names: list[str] | None
    sha256: str  # of the file as read: a checkpoint is only resumed on the same data
    rows: int | None = None  # a sharded dataset's count (its modalities stream: not held here)

    @property
    def size(self) -> int:
        """Samples in the dataset."""
        return self.rows if self.rows is not None else len(next(iter(self.modalities.values())))


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


#: What numpy and zipfile raise on a truncated or corrupt archive (object arrays are refused before).
_CORRUPT = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)


def read_npz(source: str, payload: bytes | Path, *, max_array_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Open an .npz (bytes or a file) without pickles: object arrays are refused, never executed.

    Every member must be an ``.npy`` array whose header agrees with the member's size; the headers
    are read first, so no array is allocated beyond what the file really holds (nor, with a limit,
    beyond ``max_array_bytes`` in all).
    """
    with io.BytesIO(payload) if isinstance(payload, bytes) else Path(payload).open("rb") as handle:
        if handle.read(2) != b"PK":
            raise DataError(source, "not a valid .npz file (not a zip archive)")
        size = handle.seek(0, io.SEEK_END)
        handle.seek(0)
        try:
            _check_members(source, handle, size, max_array_bytes)
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except _CORRUPT as exc:
            raise _corrupt(source, exc) from exc


def _corrupt(source: str, exc: BaseException) -> DataError:
    # a parser's message may span several lines or quote the header: one short line
    return DataError(source, f"not a valid .npz file ({one_line(str(exc))[:200] or type(exc).__name__})")


def read_npz_outline(
    source: str,
    handle: IO[bytes],
    size: int,
    *,
    read: Collection[str],
    max_array_bytes: int | None = None,
    max_read_bytes: int | None = None,
) -> tuple[dict[str, tuple[tuple[int, ...], np.dtype[Any]]], dict[str, np.ndarray]]:
    """The shape and dtype of every array of the .npz open in ``handle`` (seekable, ``size`` bytes),
    and the arrays named in ``read`` (within ``max_read_bytes`` together, checked from their headers
    before any is read), under :func:`read_npz`'s checks; nothing else of the file is read (a shard's
    first pass, through ranged reads)."""
    try:
        if handle.read(2) != b"PK":
            raise DataError(source, "not a valid .npz file (not a zip archive)")
        handle.seek(0)
        headers = _check_members(source, handle, size, max_array_bytes)
        wanted = sum(math.prod(shape) * dtype.itemsize for name, (shape, dtype) in headers.items() if name in read)
        if max_read_bytes is not None and wanted > max_read_bytes:
            names = sorted(set(read) & set(headers))
            raise DataError(source, f"arrays {names} take {wanted} bytes, over the {max_read_bytes} left for them")
        handle.seek(0)
        with zipfile.ZipFile(handle) as archive:
            arrays = {}
            for name in read:
                if name in headers:
                    with archive.open(f"{name}.npy") as member:
                        arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
    except _CORRUPT as exc:
        raise _corrupt(source, exc) from exc
    return headers, arrays


def _check_members(
    source: str, handle: IO[bytes], file_size: int, max_array_bytes: int | None
) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Refuse non-array members, object arrays, headers that promise more bytes than their member
    holds, and (with a limit) too many bytes in all: from the zip directory and the .npy headers.
    Returns each array's shape and dtype."""
    total = 0
    headers = {}
    with zipfile.ZipFile(handle) as archive:
        members = archive.infolist()
        if len(members) > MAX_ARRAYS:
            raise DataError(source, f"holds {len(members)} arrays; the limit is {MAX_ARRAYS}")
        names = [info.filename for info in members]
        twice = sorted({name[:80] for name in names if names.count(name) > 1})
        if twice:
            raise DataError(source, f"holds more than one member named {twice}")
        for info in members:
            if not info.filename.endswith(".npy"):
                raise DataError(source, f"member {info.filename[:80]!r} is not an .npy array")
            name = info.filename[:-4][:80]
            _check_compression(source, name, info, file_size)
            shape, dtype = _member_header(source, name, archive, info)
            headers[info.filename[:-4]] = (shape, dtype)
            total += math.prod(shape) * dtype.itemsize
            if max_array_bytes is not None and total > max_array_bytes:
                raise DataError(
                    source, f"array {name!r}: the arrays take over {max_array_bytes} bytes once decompressed"
                )
    return headers


def _check_compression(source: str, name: str, info: zipfile.ZipInfo, file_size: int) -> None:
    """A member's declared sizes must be possible: stored as is, or deflated (np.savez_compressed)
    at most ``MAX_DEFLATE_RATIO`` to one, from no more bytes than the file has."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(
            source,
            f"array {name!r} is compressed with zip method {info.compress_type}; only stored or deflated ones are read",
        )
    ratio = 1 if info.compress_type == zipfile.ZIP_STORED else MAX_DEFLATE_RATIO
    if info.compress_size > file_size or info.file_size > info.compress_size * ratio + 64:
        raise DataError(
            source, f"array {name!r}: the zip directory declares impossible sizes (a corrupt or crafted file)"
        )


def _member_header(
    source: str, name: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo
) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """A member's shape and dtype, from its .npy header, checked against the member's size."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        header_bytes = member.tell()
    if dtype.hasobject:
        raise DataError(source, f"array {name!r} holds Python objects; not a readable .npz without pickled objects")
    if any(length < 0 for length in shape):
        raise DataError(source, f"array {name!r} has a negative dimension in its shape {shape}")
    data_bytes = math.prod(shape) * dtype.itemsize
    if header_bytes + data_bytes != info.file_size:
        raise DataError(
            source,
            f"array {name!r}: its header declares shape {shape} of {dtype} ({data_bytes} bytes), "
            f"but the member holds {info.file_size - header_bytes} bytes (a truncated or corrupt file)",
        )
    return tuple(shape), dtype


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
        if source.endswith("/"):
            raise DataError(source, "names a folder or prefix of shards: training streams it, this reads one file")
        payload = read(source, max_bytes=max_bytes)
    refuse_oversize(source, len(payload), max_bytes)
    arrays = read_npz(source, payload, max_array_bytes=max_bytes)
    wanted = [*spec.primary, *spec.auxiliary]
    if spec.retrieval_target:
        wanted.append(spec.retrieval_target)
    checked = check_arrays(source, arrays, modalities=wanted, task=task, max_classes=max_classes)
    digest = hashlib.sha256(payload).hexdigest()
    return RawDataset(source, checked.modalities, checked.label, checked.split, checked.class_names, digest)
