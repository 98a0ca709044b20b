"""From checked arrays to what the trainer uses: a split, masked labels, normalisation.

Torch-free. Everything random here is seeded by ``dataset.split_seed`` (not the training seed),
so every method and every training seed sees the same split and the same labelled subset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.data.arrays import MAX_CLASSES, DataReader, RawDataset, load_raw, read_local_or_s3
from core.data.checks import SPLIT_VALUES, check_annotations, require_two_classes
from core.data.shards import (
    DEFAULT_CACHE_BYTES,
    BlockCache,
    LocalOrS3Folders,
    ShardedSource,
    ShardOpener,
    StreamedColumn,
    StreamedRows,
    is_sharded,
    scan,
)
from core.errors import DataError
from core.spec import DatasetSpec, TaskKind


@dataclass(frozen=True)
class Normaliser:
    """Per-feature (vectors) or per-channel (sequences) mean and std from the training split."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    def apply(self, name: str, values: np.ndarray) -> np.ndarray:
        """Standardise one modality's array."""
        return ((values - self.mean[name]) / self.std[name]).astype(np.float32)


@dataclass(frozen=True)
class Part:
    """One split: normalised modalities and (possibly masked) labels. The modalities are arrays in
    memory, or, for a sharded dataset, :class:`StreamedColumn` s read through a bounded cache
    (``stream``); both index as ``values[rows]``."""

    modalities: dict[str, Any]  # np.ndarray, or StreamedColumn when ``stream`` is set
    label: np.ndarray | None
    indices: np.ndarray  # row numbers in the original file (in the joined shards)
    stream: StreamedRows | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, positions: np.ndarray | slice) -> dict[str, np.ndarray]:
        """Every modality's rows at ``positions`` (in the split), as arrays (views for a slice in memory);
        a streamed split reads each block they touch once for all the modalities."""
        if self.stream is not None:
            return self.stream.take(positions)
        return {name: values[positions] for name, values in self.modalities.items()}


@dataclass(frozen=True)
class PreparedData:
    """The three splits plus what a model needs to know about the data."""

    train: Part
    val: Part
    test: Part
    normaliser: Normaliser
    shapes: dict[str, tuple[int, ...]]  # per-sample shape of every modality
    output_dim: int  # classes, labels or targets (0 for retrieval)
    class_names: list[str] | None
    info: dict[str, object] = field(default_factory=dict)


def is_labelled(label: np.ndarray) -> np.ndarray:
    """Boolean mask of samples that carry a label (-1 or NaN mark the others)."""
    if label.dtype.kind in "iu":
        return label >= 0
    return np.isfinite(label).reshape(len(label), -1).all(axis=1)


def _strata(label: np.ndarray | None, task: TaskKind, n: int) -> np.ndarray:
    if label is not None and task == "classification":
        return label
    return np.zeros(n, dtype=np.int64)


def _seeded_split(spec: DatasetSpec, label: np.ndarray | None, task: TaskKind, n: int) -> tuple[np.ndarray, str]:
    """Stratified train/val/test split of the labelled samples; unlabelled ones go to train."""
    rng = np.random.default_rng(spec.split_seed)
    split = np.full(n, "train", dtype="<U5")
    labelled = is_labelled(label) if label is not None else np.ones(n, dtype=bool)
    strata = _strata(label, task, n)
    for stratum in np.unique(strata[labelled]):
        members = rng.permutation(np.flatnonzero(labelled & (strata == stratum)))
        n_val = round(len(members) * spec.val_fraction)
        n_test = round(len(members) * spec.test_fraction)
        split[members[:n_val]] = "val"
        split[members[n_val : n_val + n_test]] = "test"
    return split, f"seeded stratified split (split_seed={spec.split_seed})"


def _carve_val(
    spec: DatasetSpec, label: np.ndarray | None, task: TaskKind, split: np.ndarray
) -> tuple[np.ndarray, str]:
    """Move a seeded ``val_from_train_fraction`` of the labelled train rows to val, per class.

    Stratified by class for classification, one seeded random draw otherwise. Unlabelled train rows
    stay in train (a val sample needs a label); a class with a single labelled train row keeps it in
    train; every other class gives at least one row and keeps at least one.
    """
    rng = np.random.default_rng(spec.split_seed)
    carved = split.copy()
    train = np.flatnonzero(split == "train")
    candidates = train[is_labelled(label[train])] if label is not None else train
    strata = _strata(label, task, len(split))[candidates]
    for stratum in np.unique(strata):
        members = rng.permutation(candidates[strata == stratum])
        n_val = min(len(members) - 1, max(1, round(len(members) * spec.val_from_train_fraction)))
        carved[members[:n_val]] = "val"
    how = "stratified" if task == "classification" else "random"
    fraction = spec.val_from_train_fraction
    return carved, f"split array in the file, val a seeded {how} {fraction:.0%} of train (split_seed={spec.split_seed})"


def _label_subset(spec: DatasetSpec, label: np.ndarray, task: TaskKind, train: np.ndarray) -> np.ndarray:
    """Train rows that keep their label under ``label_fraction`` (stratified, >= 1 per class)."""
    rng = np.random.default_rng(spec.split_seed + 1)
    candidates = train[is_labelled(label[train])]
    if spec.label_fraction >= 1.0:
        return candidates
    strata = _strata(label, task, len(label))[candidates]
    kept = []
    for stratum in np.unique(strata):
        members = rng.permutation(candidates[strata == stratum])
        kept.append(members[: max(1, round(len(members) * spec.label_fraction))])
    return np.sort(np.concatenate(kept))


def _masked(label: np.ndarray, keep: np.ndarray) -> np.ndarray:
    masked = label.copy()
    drop = ~np.isin(np.arange(len(label)), keep)
    if masked.dtype.kind in "iu":
        masked[drop] = -1
    else:
        masked[drop] = np.nan
    return masked


def _normaliser(raw: RawDataset, train: np.ndarray) -> Normaliser:
    """Statistics accumulated in float64: squares of float32 values beyond ~1e19 overflow float32."""
    mean, std = {}, {}
    for name, values in raw.modalities.items():
        axes = (0,) if values.ndim == 2 else (0, 2)
        mu = values[train].mean(axis=axes, keepdims=True, dtype=np.float64)[0]
        sigma = values[train].std(axis=axes, keepdims=True, dtype=np.float64)[0]
        mean[name] = mu.astype(np.float32)
        std[name] = np.where(sigma < 1e-6, 1.0, sigma).astype(np.float32)
    return Normaliser(mean, std)


def _output_dim(raw: RawDataset, task: TaskKind) -> int:
    if raw.label is None or task == "retrieval":
        return 0
    if task == "classification":  # class_names, when given, name every class id (checked on reading)
        return len(raw.class_names) if raw.class_names else int(raw.label.max()) + 1
    return 1 if raw.label.ndim == 1 else int(raw.label.shape[1])


def _split(spec: DatasetSpec, raw: RawDataset, task: TaskKind) -> tuple[np.ndarray, str]:
    """The file's split (val carved from train when it has none) or a seeded one, and how it was made."""
    if raw.split is None:
        return _seeded_split(spec, raw.label, task, raw.size)
    if "val" not in raw.split:
        return _carve_val(spec, raw.label, task, raw.split)
    return raw.split, "split array in the file"


@dataclass(frozen=True)
class Split:
    """The row numbers (in the file) of each split, and how the split was made."""

    rows: dict[str, np.ndarray]  # "train", "val", "test"
    how: str


def split_rows(spec: DatasetSpec, raw: RawDataset, task: TaskKind) -> Split:
    """Train, val and test rows, as every run on ``spec`` splits ``raw``. Refuses a split that
    cannot train or evaluate: val or test empty or with unlabelled rows, no labelled train row,
    classification with fewer than 2 train classes, multilabel val or test without a positive."""
    split, how = _split(spec, raw, task)
    rows = {name: np.flatnonzero(split == name) for name in SPLIT_VALUES}
    if len(rows["val"]) == 0 or len(rows["test"]) == 0:
        raise DataError(raw.source, f"the {how} left val or test empty: too few labelled samples per class")
    if raw.label is None:
        return Split(rows, how)
    for name in ("val", "test"):
        if not is_labelled(raw.label[rows[name]]).all():
            raise DataError(raw.source, f"every {name} sample needs a label; unlabelled ones belong in train")
        if task == "multilabel" and not (raw.label[rows[name]] == 1).any():
            raise DataError(raw.source, f"array 'label': the {name} samples have no positive label ({how})")
    if task != "retrieval" and not is_labelled(raw.label[rows["train"]]).any():
        raise DataError(raw.source, f"array 'label': no train sample has a label ({how})")
    if task == "classification":
        require_two_classes(raw.source, raw.label, rows["train"], f"train samples ({how})")
    return Split(rows, how)


def prepare(
    spec: DatasetSpec,
    task: TaskKind,
    *,
    max_bytes: int | None = None,
    max_classes: int = MAX_CLASSES,
    read: DataReader = read_local_or_s3,
    open_shards: ShardOpener = LocalOrS3Folders(),  # noqa: B008  # a frozen dataclass: immutable
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> PreparedData:
    """Load through ``read`` (within ``max_bytes`` and ``max_classes``), split, mask labels to
    ``label_fraction``, normalise. A sharded ``uri`` (ending in ``/``) is opened through ``open_shards``
    and streamed (``core.data.shards``): ``max_bytes`` bounds each of its files, ``cache_bytes`` the
    blocks held in memory."""
    source: ShardedSource | None = None
    if spec.id is None and is_sharded(spec.uri):
        assert spec.uri is not None
        wanted = [*spec.primary, *spec.auxiliary, *([spec.retrieval_target] if spec.retrieval_target else [])]
        source, found = scan(spec.uri, open_shards, modalities=wanted, max_bytes=max_bytes, cache_bytes=cache_bytes)
        label, split_array, names = check_annotations(
            spec.uri, found.rows, found.label, found.split, found.class_names, task, max_classes
        )
        raw = RawDataset(spec.uri, {}, label, split_array, names, "", rows=found.rows)
    else:
        raw = load_raw(spec, task, max_bytes=max_bytes, max_classes=max_classes, read=read)
    split = split_rows(spec, raw, task)
    train, val, test = (split.rows[name] for name in SPLIT_VALUES)
    label = raw.label
    if label is not None:
        kept = _label_subset(spec, label, task, train)
        label = _masked(label, np.concatenate([kept, val, test]))
        if not spec.keep_unlabelled:
            train = train[is_labelled(label[train])]
    if source is None:
        normaliser, digest, shapes = _normaliser(raw, train), raw.sha256, _shapes(raw)
    else:
        mean, std, digest = source.statistics(train)
        normaliser, shapes = Normaliser(mean, std), dict(source.shapes)
        cache = BlockCache(source, normaliser.apply, cache_bytes)

    def part(rows: np.ndarray) -> Part:
        labels = None if label is None else label[rows]
        if source is None:
            arrays = {name: normaliser.apply(name, values[rows]) for name, values in raw.modalities.items()}
            return Part(arrays, labels, rows)
        stream = StreamedRows(cache, rows)
        return Part({name: StreamedColumn(stream, name) for name in source.modalities}, labels, rows, stream)

    n_labelled = int(is_labelled(label[train]).sum()) if label is not None else len(train)
    info: dict[str, object] = {
        "source": raw.source,
        "sha256": digest,
        "split": split.how,
        "sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "train_labelled": n_labelled,
    }
    if source is not None:
        info["shards"] = {"layout": source.layout, "files": len(source.files()), "blocks": len(source.blocks)}
    return PreparedData(
        part(train), part(val), part(test), normaliser, shapes, _output_dim(raw, task), raw.class_names, info
    )


def _shapes(raw: RawDataset) -> dict[str, tuple[int, ...]]:
    return {name: tuple(values.shape[1:]) for name, values in raw.modalities.items()}


def split_part(
    spec: DatasetSpec, task: TaskKind, part: str, *, read: DataReader = read_local_or_s3
) -> tuple[dict[str, np.ndarray], str]:
    """The rows of split ``part`` exactly as ``prepare`` splits ``spec``'s data, not normalised (what
    ``predict`` takes): every modality of the spec, and ``label`` when the file has one; and how the
    split was made."""
    raw = load_raw(spec, task, read=read)
    split = split_rows(spec, raw, task)
    rows = split.rows[part]
    arrays = {name: values[rows] for name, values in raw.modalities.items()}
    if raw.label is not None:
        arrays["label"] = raw.label[rows]
    return arrays, split.how
