"""Sharded datasets: a folder or prefix of shards, streamed a block at a time in bounded memory.

Torch-free. A dataset whose ``uri`` ends in ``/`` names a local folder or an S3 prefix holding either

- ``.npz`` shards (read in the order of their names), each with the generic format's arrays for its
  rows: the same modalities with the same per-sample shapes, ``label`` and ``split`` when the
  dataset has them, and the same ``class_names``; or
- one ``.npy`` file per array (``audio.npy``, ``video.npy``, ``label.npy``, ``split.npy``...), the
  whole dataset in each, read in blocks of rows by positioned (local) or ranged (S3) reads.

Only the files at the top of the folder count. Preparing such a dataset takes two streaming passes:
the first reads the per-sample annotations (``label``, ``split``: a few bytes a row, kept in memory)
and the modalities' headers, so the split and the labelled subset are drawn exactly as for one file;
the second reads every modality once, checks it, and accumulates the training rows' normalisation
statistics (Chan's pairwise update, in float64) and the content digest a checkpoint is tied to.

Training then reads rows through :class:`BlockCache`, which holds at most ``cache_bytes`` of
normalised blocks (and never fewer than two). An epoch visits the blocks in a seeded order, a window
of blocks at a time, its rows shuffled within the window (:meth:`StreamedRows.order`), so each block
is read once an epoch rather than once a batch. Memory is the cache, the annotations and one block
being read; it does not grow with the dataset's size.

Reads are positioned reads, not memory maps: the pages of a map stay resident in the process (its
RSS) until the kernel needs them, a read's pages sit in the page cache, which any process may reuse.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from core.data.arrays import MAX_CLASSES, read_npz, read_npz_outline, refuse_oversize
from core.data.checks import checked_modality
from core.errors import DataError
from storage.store import ArtifactStore, LocalStore, open_store

MAX_SHARDS = 10_000  # files a sharded dataset may hold: a listing, and a block table, stay small
DEFAULT_CACHE_BYTES = 256 << 20  # normalised blocks held while training
BLOCK_FRACTION = 16  # an .npy block holds about 1/16 of the cache, so a window spans 8 blocks
MIN_BLOCK_ROWS = 64
OUTLINE_READ_BYTES = 64 << 10  # a ranged read of a shard's first pass: its zip directory, a header, annotations
ANNOTATIONS = ("label", "split", "class_names")
_MAX_HEADER = 65_536 + 12  # an .npy header's length is a 16-bit (1.0) or 32-bit (2.0) field; 1.0's bound


def is_sharded(uri: str | None) -> bool:
    """Whether ``uri`` names a folder or prefix of shards (it ends in ``/``) rather than one file."""
    return uri is not None and uri.endswith("/")


class ShardOpener(Protocol):
    """Opens the folder or prefix a sharded ``uri`` names as a store (picklable: ranks reopen it)."""

    def __call__(self, uri: str) -> ArtifactStore:
        """The store rooted at ``uri``; DataError when it may not be read."""


@dataclass(frozen=True)
class LocalOrS3Folders:
    """The opener of a machine's own folders and S3 prefixes (``mmkd train``; the worker checks first)."""

    endpoint_url: str | None = None
    max_attempts: int = 5
    timeout_s: float = 10.0

    def __call__(self, uri: str) -> ArtifactStore:
        if uri.startswith("dataset:"):
            message = "an uploaded dataset is read by the mmkd service; locally, name its folder in dataset.uri"
            raise DataError(uri, message)
        try:
            return open_store(
                uri, endpoint_url=self.endpoint_url, max_attempts=self.max_attempts, timeout_s=self.timeout_s
            )
        except ValueError as exc:
            raise DataError(uri, f"cannot be read: {exc}") from exc


@dataclass(frozen=True)
class NpyHeader:
    """Where one ``.npy`` file's rows are: the data's offset, its dtype and shape."""

    offset: int
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize


@dataclass(frozen=True)
class Block:
    """Rows ``[start, stop)`` of the dataset, read together: one ``.npz`` shard (``key``), or a range of
    every ``.npy`` file (``key`` None)."""

    start: int
    stop: int
    key: str | None


@dataclass(frozen=True)
class Annotations:
    """What the first pass keeps of every row: the joined ``label``, ``split`` and ``class_names``."""

    rows: int
    label: np.ndarray | None
    split: np.ndarray | None
    class_names: np.ndarray | None


@dataclass
class ShardedSource:
    """A scanned sharded dataset: its blocks and how to read one. Picklable (the open store is not
    kept), so a launcher's ranks reopen it themselves."""

    uri: str
    opener: ShardOpener
    layout: Literal["npz", "npy"]
    modalities: list[str]
    shapes: dict[str, tuple[int, ...]]  # per sample
    blocks: list[Block]
    headers: dict[str, NpyHeader]  # the .npy layout's files, by array name
    max_shard_bytes: int | None
    dtypes: dict[str, str] = field(default_factory=dict)  # as stored (the first shard's, for .npz)
    _store: ArtifactStore | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = self.opener(self.uri)
        return self._store

    @property
    def starts(self) -> np.ndarray:
        """Each block's first row."""
        return np.array([block.start for block in self.blocks], dtype=np.int64)

    @property
    def block_bytes(self) -> int:
        """The largest block's size once read (float32)."""
        per_row = sum(math.prod(shape) * 4 for shape in self.shapes.values())
        return max(block.stop - block.start for block in self.blocks) * per_row

    def read_block(self, index: int, digest: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Block ``index``'s modalities, checked and as float32 (not normalised); ``digest`` (file name
        to hashlib object) takes the bytes read, in file order when the blocks are read in order."""
        block = self.blocks[index]
        if block.key is not None:
            return self._read_npz(block, digest)
        arrays = {}
        for name in self.modalities:
            header, key = self.headers[name], f"{name}.npy"
            start, stop = header.offset + block.start * header.row_bytes, header.offset + block.stop * header.row_bytes
            payload = _range(self.store, f"{self.uri}{key}", key, start, stop)
            if len(payload) != stop - start:
                raise DataError(
                    f"{self.uri}{key}", "the file is shorter than when it was scanned (changed or truncated)"
                )
            if digest is not None:
                digest[key].update(payload)
            values = np.frombuffer(payload, dtype=header.dtype).reshape(block.stop - block.start, *header.shape[1:])
            arrays[name] = checked_modality(f"{self.uri}{key}", name, values)
        return arrays

    def _read_npz(self, block: Block, digest: dict[str, Any] | None) -> dict[str, np.ndarray]:
        assert block.key is not None
        source = f"{self.uri}{block.key}"
        arrays = _read_shard(self.store, source, block.key, self.max_shard_bytes, digest)
        checked = {}
        for name in self.modalities:
            if name not in arrays:
                raise DataError(source, f"modality {name!r} is not in this shard")
            values = checked_modality(source, name, arrays[name])
            if values.shape != (block.stop - block.start, *self.shapes[name]):
                raise DataError(source, "the shard changed since it was scanned (its shapes differ)")
            checked[name] = values
        return checked

    def statistics(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
        """The second pass: every block read once, in order. Returns the mean and std (population, as
        float64 numpy computes them in one pass) of ``rows`` (sorted file rows: the training split) per
        feature of vectors and per channel of sequences, and the dataset's content digest."""
        digest = {key: hashlib.sha256() for key in self.files()}
        if self.layout == "npy":
            for name in [*self.modalities, *self._annotation_files()]:
                key = f"{name}.npy"
                digest[key].update(_range(self.store, f"{self.uri}{key}", key, 0, self.headers[name].offset))
            for name in self._annotation_files():
                key = f"{name}.npy"
                size = _size(self.store, f"{self.uri}{key}", key)
                digest[key].update(_range(self.store, f"{self.uri}{key}", key, self.headers[name].offset, size))
        moments: dict[str, tuple[float, np.ndarray, np.ndarray]] = {}
        for index, block in enumerate(self.blocks):
            arrays = self.read_block(index, digest)
            lo, hi = np.searchsorted(rows, [block.start, block.stop])
            local = rows[lo:hi] - block.start
            if len(local) == 0:
                continue
            for name, values in arrays.items():
                moments[name] = _combine(moments.get(name), values[local])
        if not moments:
            raise DataError(self.uri, "no training row is left to normalise with (split and labels)")
        mean, std = {}, {}
        for name in self.modalities:
            count, mu, m2 = moments[name]
            sigma = np.sqrt(m2 / count)
            mean[name] = mu.astype(np.float32)
            std[name] = np.where(sigma < 1e-6, 1.0, sigma).astype(np.float32)
        joined = hashlib.sha256()
        for key in sorted(digest):
            joined.update(f"{key}:{digest[key].hexdigest()}\n".encode())
        return mean, std, joined.hexdigest()

    def files(self) -> list[str]:
        """The files read: the shards, or the arrays' .npy files."""
        if self.layout == "npz":
            return sorted({block.key for block in self.blocks if block.key is not None})
        return [f"{name}.npy" for name in [*self.modalities, *self._annotation_files()]]

    def file_sizes(self) -> dict[str, int]:
        """Each file's size in bytes, as the store answers now (a vanished file is a DataError)."""
        return {key: _size(self.store, f"{self.uri}{key}", key) for key in self.files()}

    def _annotation_files(self) -> list[str]:
        return [name for name in ANNOTATIONS if name in self.headers]


def _check_layout(source: str, name: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
    """What can be told from a dtype and a shape before any value is read, so a crafted file costs nothing:
    a modality is a plain number type (no zero-size, structured or subarray dtype), 2-D or 3-D with no
    empty per-sample dimension; ``label`` is numeric, (N,) or (N, K) with K within the class cap;
    ``split`` holds short strings; ``class_names`` is 1-D."""
    plain = dtype.itemsize > 0 and dtype.fields is None and dtype.subdtype is None
    if name == "split":
        if not plain or dtype.kind not in "US" or len(shape) != 1 or dtype.itemsize > 5 * 4:
            raise DataError(source, "array 'split' must be (N,) of 'train', 'val' or 'test'")
    elif name == "class_names":
        if not plain or len(shape) != 1 or shape[0] > MAX_CLASSES:
            raise DataError(source, f"array 'class_names' must be (K,) with at most {MAX_CLASSES} names")
    elif name == "label":
        if not plain or dtype.kind not in "biuf" or len(shape) not in (1, 2) or math.prod(shape[1:]) > MAX_CLASSES:
            raise DataError(source, f"array 'label' must be numeric, (N,) or (N, K) with K <= {MAX_CLASSES}")
    elif not plain or dtype.kind not in "biuf":
        raise DataError(source, f"modality {name!r} must be numeric, got dtype {dtype}")
    elif len(shape) not in (2, 3) or 0 in shape[1:]:
        raise DataError(source, f"modality {name!r} must be (N, F) or (N, C, L) with no empty dimension, got {shape}")


def _combine(
    moments: tuple[float, np.ndarray, np.ndarray] | None, values: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Chan et al.'s update of (count, mean, M2) with a block of rows: per feature of (N, F) vectors,
    per channel of (N, C, L) sequences, shaped like numpy's ``keepdims`` result without the first axis."""
    axes = (0,) if values.ndim == 2 else (0, 2)
    count = float(values.shape[0] * (1 if values.ndim == 2 else values.shape[2]))
    mean = values.mean(axis=axes, keepdims=True, dtype=np.float64)[0]
    m2 = ((values - mean[None]) ** 2).sum(axis=axes, keepdims=True, dtype=np.float64)[0]
    if moments is None:
        return count, mean, m2
    n, mu, acc = moments
    total = n + count
    delta = mean - mu
    return total, mu + delta * (count / total), acc + m2 + delta**2 * (n * count / total)


def _read_shard(
    store: ArtifactStore, source: str, key: str, max_bytes: int | None, digest: dict[str, Any] | None
) -> dict[str, np.ndarray]:
    refuse_oversize(source, _size(store, source, key), max_bytes)
    payload = _get(store, source, key)
    refuse_oversize(source, len(payload), max_bytes)  # it may have grown since its size was asked
    if digest is not None:
        digest[key].update(payload)
    return read_npz(source, payload, max_array_bytes=max_bytes)


def _outline_shard(
    store: ArtifactStore, source: str, key: str, max_bytes: int | None, annotation_bytes: int | None
) -> tuple[dict[str, tuple[tuple[int, ...], np.dtype[Any]]], dict[str, np.ndarray]]:
    """A shard's first pass: every array's shape and dtype and the annotations' values (within
    ``annotation_bytes``), through ranged reads of its zip directory, its members' headers and the
    annotation members only."""
    size = _size(store, source, key)
    refuse_oversize(source, size, max_bytes)
    handle = io.BufferedReader(_StoreFile(store, source, key, size), buffer_size=OUTLINE_READ_BYTES)
    return read_npz_outline(
        source, handle, size, read=ANNOTATIONS, max_array_bytes=max_bytes, max_read_bytes=annotation_bytes
    )


class _StoreFile(io.RawIOBase):
    """One stored file as a seekable, read-only file whose reads are ranged reads (positioned, locally)."""

    def __init__(self, store: ArtifactStore, source: str, key: str, size: int) -> None:
        self.store, self.source, self.key, self.size, self.position = store, source, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        stop = min(self.position + len(buffer), self.size)
        if stop <= self.position:
            return 0
        payload = _range(self.store, self.source, self.key, self.position, stop)
        if len(payload) != stop - self.position:
            raise DataError(self.source, "the file is shorter than its size (changed or truncated)")
        memoryview(buffer).cast("B")[: len(payload)] = payload
        self.position = stop
        return len(payload)


def _size(store: ArtifactStore, source: str, key: str) -> int:
    try:
        return store.size(key)
    except FileNotFoundError as exc:
        raise DataError(source, "no longer there (the dataset changed while it was read)") from exc


def _range(store: ArtifactStore, source: str, key: str, start: int, stop: int) -> bytes:
    try:
        return store.get_range(key, start, stop)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise DataError(source, "no longer there (the dataset changed while it was read)") from exc


def _get(store: ArtifactStore, source: str, key: str) -> bytes:
    try:
        return store.get_bytes(key)
    except FileNotFoundError as exc:
        raise DataError(source, "no longer there (the dataset changed while it was read)") from exc


def _listing(uri: str, store: ArtifactStore) -> list[str]:
    """The top-level ``.npz`` or ``.npy`` files of the folder, sorted; local ones must stay inside it."""
    try:
        keys = store.list_top(MAX_SHARDS + 1)
    except FileNotFoundError as exc:
        raise DataError(uri, "holds no .npz shards and no .npy arrays (or does not exist)") from exc
    if len(keys) > MAX_SHARDS:
        raise DataError(uri, f"holds more than {MAX_SHARDS} files; a sharded dataset may hold at most {MAX_SHARDS}")
    npz = [key for key in keys if key.endswith(".npz")]
    npy = [key for key in keys if key.endswith(".npy")]
    if npz and npy:
        raise DataError(uri, "holds both .npz shards and .npy arrays; a sharded dataset is one layout or the other")
    files = npz or npy
    if not files:
        raise DataError(uri, "holds no .npz shards and no .npy arrays (or does not exist)")
    if isinstance(store, LocalStore):  # a link may not lead out of the folder
        for key in files:
            if not (store.root / key).resolve().is_relative_to(store.root):
                raise DataError(f"{uri}{key}", "is a link to a file outside the dataset's folder")
    return files


def scan(
    uri: str, opener: ShardOpener, *, modalities: list[str] | None, max_bytes: int | None, cache_bytes: int
) -> tuple[ShardedSource, Annotations]:
    """The first pass over the sharded dataset at ``uri``: its layout, blocks and per-sample shapes, and
    the joined annotations. ``max_bytes`` bounds each file (a shard, or an annotation's ``.npy``).
    ``modalities`` None takes every array but the annotations (of the first shard, for ``.npz``)."""
    store = opener(uri)
    files = _listing(uri, store)
    if files[0].endswith(".npz"):
        source, annotations = _scan_npz(uri, store, files, modalities, max_bytes)
    else:
        source, annotations = _scan_npy(uri, store, files, modalities, max_bytes, cache_bytes)
    source.opener = opener
    source._store = store
    return source, annotations


def _scan_npz(
    uri: str, store: ArtifactStore, files: list[str], wanted: list[str] | None, max_bytes: int | None
) -> tuple[ShardedSource, Annotations]:
    blocks: list[Block] = []
    shapes: dict[str, tuple[int, ...]] = {}
    labels: list[np.ndarray] = []
    splits: list[np.ndarray] = []
    names: np.ndarray | None = None
    modalities: list[str] = []
    dtypes: dict[str, str] = {}
    start = 0
    kept_bytes = 0  # the annotations kept so far: together within max_bytes, as one file's would be
    for position, key in enumerate(files):
        source = f"{uri}{key}"
        left = None if max_bytes is None else max_bytes - kept_bytes
        headers, arrays = _outline_shard(store, source, key, max_bytes, left)
        kept_bytes += sum(array.nbytes for array in arrays.values())
        if position == 0:
            modalities = list(wanted) if wanted is not None else _all_modalities(source, set(headers))
            dtypes = {name: str(headers[name][1]) for name in modalities if name in headers}
        missing = [name for name in modalities if name not in headers]
        if missing:
            raise DataError(
                source, f"modality {missing} not in this shard; it has {sorted(set(headers) - set(ANNOTATIONS))}"
            )
        for name in [*modalities, *ANNOTATIONS]:
            if name in headers:
                _check_layout(source, name, headers[name][1], headers[name][0])
        rows = _shard_rows(source, {name: headers[name][0] for name in modalities})
        for name in modalities:
            shape = headers[name][0][1:]
            if shapes.setdefault(name, shape) != shape:
                raise DataError(
                    source, f"modality {name!r} has per-sample shape {shape}; the first shard's is {shapes[name]}"
                )
        for array, kept in (("label", labels), ("split", splits)):
            if position > 0 and (array in arrays) != bool(kept):
                raise DataError(source, f"array {array!r} must be in every shard or in none")
            if array in arrays:
                if arrays[array].shape[:1] != (rows,):
                    raise DataError(
                        source, f"array {array!r} has {arrays[array].shape[:1]} rows, the modalities {rows}"
                    )
                kept.append(arrays[array])
        shard_names = arrays.get("class_names")
        if position == 0:
            names = shard_names
        elif (names is None) != (shard_names is None) or (
            names is not None and shard_names is not None and not np.array_equal(names, shard_names)
        ):
            raise DataError(
                source, "array 'class_names' differs from the first shard's; every shard names the same classes"
            )
        blocks.append(Block(start, start + rows, key))
        start += rows
    scanned = ShardedSource(uri, LocalOrS3Folders(), "npz", modalities, shapes, blocks, {}, max_bytes, dtypes)
    return scanned, Annotations(start, _joined(uri, "label", labels), _joined(uri, "split", splits), names)


def _all_modalities(source: str, names: set[str]) -> list[str]:
    modalities = sorted(names - set(ANNOTATIONS))
    if not modalities:
        raise DataError(source, "holds no modality array (only label, split or class_names)")
    return modalities


def _joined(uri: str, name: str, parts: list[np.ndarray]) -> np.ndarray | None:
    if not parts:
        return None
    try:
        return np.concatenate(parts)
    except ValueError as exc:  # (N,) in one shard, (N, K) in another, or text in one and numbers in another
        raise DataError(uri, f"array {name!r} has a different shape or kind in different shards") from exc


def _shard_rows(source: str, shapes: dict[str, tuple[int, ...]]) -> int:
    counts = {name: (shape[0] if shape else 0) for name, shape in shapes.items()}
    if len(set(counts.values())) != 1:
        raise DataError(source, f"modalities have different sample counts: {counts}")
    rows = next(iter(counts.values()))
    if rows == 0:
        raise DataError(source, "holds no sample")
    return rows


def _npy_header(uri: str, store: ArtifactStore, key: str, max_bytes: int | None) -> NpyHeader:
    source = f"{uri}{key}"
    size = _size(store, source, key)
    head = io.BytesIO(_range(store, source, key, 0, min(size, _MAX_HEADER)))
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        else:
            raise DataError(source, f".npy format version {version} is not read here; save with numpy's default (1.0)")
    except ValueError as exc:
        raise DataError(source, f"not a valid .npy file ({str(exc)[:200]})") from exc
    if dtype.hasobject:
        raise DataError(source, "holds Python objects; not readable without pickles")
    if fortran and len(shape) > 1:
        raise DataError(source, "is stored in Fortran order; rows are read in C order (save np.ascontiguousarray)")
    if not shape or any(length < 0 for length in shape):
        raise DataError(source, f"has shape {shape}; expected one row per sample")
    _check_layout(source, key[:-4], dtype, tuple(shape))
    header = NpyHeader(head.tell(), dtype, tuple(shape))
    if header.offset + shape[0] * header.row_bytes != size:
        raise DataError(source, f"its header declares shape {shape} of {dtype}, but the file holds {size} bytes")
    return header


def _scan_npy(
    uri: str,
    store: ArtifactStore,
    files: list[str],
    wanted: list[str] | None,
    max_bytes: int | None,
    cache_bytes: int,
) -> tuple[ShardedSource, Annotations]:
    present = {key[:-4] for key in files}
    modalities = wanted if wanted is not None else _all_modalities(uri, present)
    missing = [name for name in modalities if name not in present]
    if missing:
        raise DataError(uri, f"modality {missing} has no .npy file here; it has {sorted(present - set(ANNOTATIONS))}")
    headers = {
        name: _npy_header(uri, store, f"{name}.npy", max_bytes)
        for name in [*modalities, *ANNOTATIONS]
        if name in present
    }
    counts = {name: headers[name].shape[0] for name in [*modalities, "label", "split"] if name in headers}
    if len(set(counts.values())) != 1:
        raise DataError(uri, f"the .npy files have different sample counts: {counts}")
    rows = counts[modalities[0]]
    if rows == 0:
        raise DataError(uri, "holds no sample")
    loaded = {}
    annotations = [name for name in ANNOTATIONS if name in headers]
    together = sum(headers[name].offset + headers[name].shape[0] * headers[name].row_bytes for name in annotations)
    refuse_oversize(f"{uri}{{{','.join(name + '.npy' for name in annotations)}}}", together, max_bytes)
    for name in annotations:  # small: a few bytes a row, read whole (together within max_bytes)
        if name in headers:
            key, header = f"{name}.npy", headers[name]
            size = header.offset + header.shape[0] * header.row_bytes
            payload = _range(store, f"{uri}{key}", key, header.offset, size)
            if len(payload) != size - header.offset:
                raise DataError(f"{uri}{key}", "the file is shorter than its header says (changed or truncated)")
            loaded[name] = np.frombuffer(payload, dtype=header.dtype).reshape(header.shape)
    shapes = {name: headers[name].shape[1:] for name in modalities}
    per_row = sum(math.prod(shape) * 4 for shape in shapes.values())
    if 2 * per_row > cache_bytes:
        raise DataError(uri, f"one row takes {per_row} bytes once read; the block cache holds {cache_bytes}")
    step = max(1, min(MIN_BLOCK_ROWS, cache_bytes // 2 // per_row), cache_bytes // BLOCK_FRACTION // per_row)
    blocks = [Block(start, min(start + step, rows), None) for start in range(0, rows, step)]
    dtypes = {name: str(headers[name].dtype) for name in modalities}
    source = ShardedSource(uri, LocalOrS3Folders(), "npy", modalities, shapes, blocks, headers, max_bytes, dtypes)
    return source, Annotations(rows, loaded.get("label"), loaded.get("split"), loaded.get("class_names"))


class BlockCache:
    """The normalised blocks last read, within ``capacity`` bytes but never fewer than two (a batch may
    straddle two windows). Not thread-safe: one per process. Dropped on pickling."""

    def __init__(
        self, source: ShardedSource, normalise: Callable[[str, np.ndarray], np.ndarray], capacity: int
    ) -> None:
        self.source, self.normalise, self.capacity = source, normalise, capacity
        self.starts = source.starts
        self._blocks: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.reads = 0  # blocks read from storage (bench and tests)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_blocks": OrderedDict(), "reads": 0}

    @property
    def window_blocks(self) -> int:
        """Blocks an epoch shuffles together: half of what the cache holds."""
        return max(1, self.capacity // max(self.source.block_bytes, 1) // 2)

    def get(self, index: int) -> dict[str, np.ndarray]:
        """Block ``index``'s normalised modalities."""
        if index in self._blocks:
            self._blocks.move_to_end(index)
            return self._blocks[index]
        arrays = {name: self.normalise(name, values) for name, values in self.source.read_block(index).items()}
        self.reads += 1
        self._blocks[index] = arrays
        while len(self._blocks) > 2 and self._held() > self.capacity:
            self._blocks.popitem(last=False)
        return arrays

    def _held(self) -> int:
        return sum(values.nbytes for arrays in self._blocks.values() for values in arrays.values())

    def block_of(self, rows: np.ndarray) -> np.ndarray:
        """The block holding each file row."""
        return np.searchsorted(self.starts, rows, side="right") - 1

    def rows(self, rows: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """The normalised ``names`` of file ``rows`` (any order, repeats allowed), a block at a time."""
        out = {name: np.empty((len(rows), *self.source.shapes[name]), dtype=np.float32) for name in names}
        blocks = self.block_of(rows)
        for index in np.unique(blocks):
            where = np.flatnonzero(blocks == index)
            arrays = self.get(int(index))
            local = rows[where] - self.starts[index]
            for name in names:
                out[name][where] = arrays[name][local]
        return out


@dataclass
class StreamedRows:
    """A split's rows of a sharded dataset (``rows``: sorted file rows), read through the shared cache."""

    cache: BlockCache
    rows: np.ndarray

    def take(self, positions: np.ndarray | slice) -> dict[str, np.ndarray]:
        """Every modality of the split's rows at ``positions``."""
        return self.cache.rows(self.rows[positions], self.cache.source.modalities)

    def order(self, seed: int) -> np.ndarray:
        """An epoch's order of the split's positions: the blocks in a seeded order, taken a window at a
        time, the rows of a window in a seeded order. The same at every world size."""
        rng = np.random.default_rng(seed)
        blocks = self.cache.block_of(self.rows)
        rank = np.empty(len(self.cache.starts), dtype=np.int64)
        rank[rng.permutation(len(self.cache.starts))] = np.arange(len(self.cache.starts))
        window = rank[blocks] // self.cache.window_blocks
        return np.lexsort((rng.random(len(self.rows)), window))


class StreamedColumn:
    """One modality of a streamed split, indexed like an array (``column[rows]``) by position in the split."""

    def __init__(self, rows: StreamedRows, name: str) -> None:
        self.stream, self.name = rows, name
        self.dtype = np.dtype(np.float32)
        self.shape = (len(rows.rows), *rows.cache.source.shapes[name])
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, positions: np.ndarray | slice) -> np.ndarray:
        return self.stream.cache.rows(self.stream.rows[positions], [self.name])[self.name]


def write_shards(
    arrays: dict[str, np.ndarray],
    folder: Path,
    *,
    rows_per_shard: int | None = None,
    layout: Literal["npz", "npy"] = "npz",
) -> list[Path]:
    """Write a dataset's arrays as a sharded folder: ``.npz`` shards of ``rows_per_shard`` rows
    (``class_names`` in each), or one ``.npy`` per array. The files written, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "npy":
        written = []
        for name, values in arrays.items():
            np.save(folder / f"{name}.npy", np.ascontiguousarray(values), allow_pickle=False)
            written.append(folder / f"{name}.npy")
        return written
    per_row = {name: values for name, values in arrays.items() if name != "class_names"}
    rows = len(next(iter(per_row.values())))
    step = rows_per_shard or rows
    digits = max(5, len(str(math.ceil(rows / step))))
    written = []
    for number, start in enumerate(range(0, rows, step)):
        shard = {name: values[start : start + step] for name, values in per_row.items()}
        if "class_names" in arrays:
            shard["class_names"] = arrays["class_names"]
        path = folder / f"part-{number:0{digits}d}.npz"
        np.savez(path, **shard)  # type: ignore[arg-type]
        written.append(path)
    return written
