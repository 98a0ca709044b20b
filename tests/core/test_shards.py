"""Sharded datasets: a folder of .npz shards or of .npy arrays prepares exactly as the single file it was
cut from, streams through a bounded cache reading each block once an epoch, trains and resumes exactly,
and every malformed shard is refused with one line naming the file."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.data import shards
from core.data.arrays import load_raw
from core.data.prepare import PreparedData, prepare
from core.data.shards import LocalOrS3Folders, write_shards
from core.data.summary import summarise_npz, summarise_shards
from core.engine.checkpoint import LocalCheckpointStore
from core.engine.probe import probe
from core.engine.trainer import epoch_batches, train
from core.errors import DataError, TrainingCancelled
from core.spec import JobSpec
from core.tracking import NullTracker


def builtin(name: str) -> dict[str, np.ndarray]:
    with np.load(resources.files("core.data.builtin").joinpath(f"{name}.npz")) as archive:
        return {key: archive[key] for key in archive.files}


def with_unlabelled(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy with every 7th sample unlabelled (-1): of the train split, when the file has one."""
    label = arrays["label"].astype(np.int64).copy()
    every = np.zeros(len(label), dtype=bool)
    every[::7] = True
    label[every & (arrays["split"] == "train") if "split" in arrays else every] = -1
    return {**arrays, "label": label}


MODALITIES = {"mfeat": (["fou", "mor"], ["pix"]), "basic_motions": (["accelerometer"], ["gyroscope"])}


def spec_for(uri: str, dataset: str = "mfeat", method: str = "logit_kd", **extra: Any) -> JobSpec:
    primary, auxiliary = MODALITIES[dataset]
    return JobSpec.model_validate(
        {
            "name": "shards",
            "dataset": {"uri": uri, "primary": primary, "auxiliary": auxiliary, "label_fraction": 0.5, **extra},
            "model": {"hidden_dim": 16, "repr_dim": 8, "dropout": 0.0},
            "method": {"name": method},
            "train": {"epochs": 2, "batch_size": 128},
            "checkpoint": {"every_steps": 3},
        }
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each built-in (every 7th sample unlabelled) as one file, as .npz shards and as .npy arrays."""
    root = tmp_path_factory.mktemp("shards")
    made = {}
    for name in MODALITIES:
        arrays = with_unlabelled(builtin(name))
        np.savez(root / f"{name}.npz", **arrays)  # type: ignore[arg-type]
        made[f"{name}/file"] = root / f"{name}.npz"
        write_shards(arrays, root / f"{name}-npz", rows_per_shard=len(arrays["label"]) // 6)
        made[f"{name}/npz"] = root / f"{name}-npz"
        write_shards(arrays, root / f"{name}-npy", layout="npy")
        made[f"{name}/npy"] = root / f"{name}-npy"
    return made


def sharded(folder: Path) -> str:
    return f"{folder}/"


@pytest.mark.parametrize("dataset", ["mfeat", "basic_motions"])
@pytest.mark.parametrize("layout", ["npz", "npy"])
def test_a_sharded_dataset_prepares_as_the_file_it_was_cut_from(
    folders: dict[str, Path], dataset: str, layout: str
) -> None:
    """Same split, labelled subset, masked labels and class names; the streamed normalisation (per
    feature of mfeat's vectors, per channel of basic_motions' sequences) and the rows agree with the
    in-memory ones to float32 rounding."""
    whole = prepare(spec_for(str(folders[f"{dataset}/file"]), dataset).dataset, "classification")
    streamed = prepare(
        spec_for(sharded(folders[f"{dataset}/{layout}"]), dataset).dataset, "classification", cache_bytes=1 << 16
    )
    assert streamed.train.stream is not None and whole.train.stream is None
    assert streamed.info["split"] == whole.info["split"] and streamed.info["sizes"] == whole.info["sizes"]
    assert streamed.info["train_labelled"] == whole.info["train_labelled"]
    assert (streamed.shapes, streamed.output_dim, streamed.class_names) == (
        whole.shapes,
        whole.output_dim,
        whole.class_names,
    )
    for name in whole.normaliser.mean:
        np.testing.assert_allclose(streamed.normaliser.mean[name], whole.normaliser.mean[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(streamed.normaliser.std[name], whole.normaliser.std[name], rtol=1e-5, atol=1e-6)
    for split in ("train", "val", "test"):
        ours, theirs = getattr(streamed, split), getattr(whole, split)
        np.testing.assert_array_equal(ours.indices, theirs.indices)
        np.testing.assert_array_equal(ours.label, theirs.label)
        positions = np.random.default_rng(0).permutation(len(theirs))
        read = ours.take(positions)
        for name, values in theirs.modalities.items():
            np.testing.assert_allclose(read[name], values[positions], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(ours.modalities[name][3:40], values[3:40], rtol=1e-4, atol=1e-5)


def test_the_digest_follows_the_content(folders: dict[str, Path], tmp_path: Path) -> None:
    """A checkpoint is tied to the shards' bytes: the same folder twice gives one digest, a changed value another."""
    first = prepare(spec_for(sharded(folders["mfeat/npz"])).dataset, "classification")
    again = prepare(spec_for(sharded(folders["mfeat/npz"])).dataset, "classification")
    assert first.info["sha256"] == again.info["sha256"]
    arrays = with_unlabelled(builtin("mfeat"))
    arrays["fou"][5, 0] += 1.0
    write_shards(arrays, tmp_path / "changed", layout="npy")
    write_shards(with_unlabelled(builtin("mfeat")), tmp_path / "same", layout="npy")
    changed = prepare(spec_for(sharded(tmp_path / "changed")).dataset, "classification")
    same = prepare(spec_for(sharded(tmp_path / "same")).dataset, "classification")
    assert changed.info["sha256"] != same.info["sha256"]


def test_an_epoch_reads_each_block_once_within_the_cache(folders: dict[str, Path]) -> None:
    """The epoch order takes a window of blocks at a time, so a block is read once an epoch (a plain
    permutation would read one for nearly every row), and the cache never holds more than its budget."""
    budget = 1 << 20
    data = prepare(spec_for(sharded(folders["mfeat/npy"])).dataset, "classification", cache_bytes=budget)
    stream = data.train.stream
    assert stream is not None
    cache = stream.cache
    blocks = len(np.unique(cache.block_of(stream.rows)))
    assert blocks >= 8 and 2 <= cache.window_blocks < blocks  # several windows an epoch
    for epoch in range(2):
        order = stream.order(epoch)
        assert sorted(order.tolist()) == list(range(len(stream.rows)))  # every training row once
        windows = [set(cache.block_of(stream.rows[order[start : start + 40]])) for start in range(0, len(order), 40)]
        assert max(map(len, windows)) <= 2 * cache.window_blocks
        cache.reads = 0
        for start in range(0, len(order), 64):
            data.train.take(order[start : start + 64])
            assert cache._held() <= budget
        assert cache.reads <= blocks + 1, (cache.reads, blocks)
    assert not np.array_equal(stream.order(0), stream.order(1))
    np.testing.assert_array_equal(stream.order(3), stream.order(3))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from core.engine import checkpoint as ckpt

    _, payload = LocalCheckpointStore(folder).load_latest() or (0, b"")
    return ckpt.from_bytes(payload)["nets"]


class StopAfter(NullTracker):
    def __init__(self, steps: int) -> None:
        self.steps, self.limit = 0, steps

    def on_step(self, **_: Any) -> None:
        self.steps += 1

    def should_stop(self) -> bool:
        return self.steps >= self.limit


def test_training_on_shards_is_seeded_and_resumes_exactly(folders: dict[str, Path], tmp_path: Path) -> None:
    """Streamed training reports like any run; stopped after a checkpoint and resumed it ends bit for bit
    where the straight run does (the epoch's block order is replayed from the seed)."""
    spec = spec_for(sharded(folders["mfeat/npz"]))
    straight = train(spec, workdir=tmp_path / "a", checkpoints=LocalCheckpointStore(tmp_path / "a" / "ck"))
    assert straight["data"]["shards"] == {"layout": "npz", "files": 7, "blocks": 7}
    per_epoch = -(-straight["data"]["sizes"]["train"] // 128)  # every training row an epoch, in batches of 128
    assert straight["steps"] == per_epoch * straight["epochs"]
    with pytest.raises(TrainingCancelled):
        train(
            spec, workdir=tmp_path / "b", checkpoints=LocalCheckpointStore(tmp_path / "b" / "ck"), tracker=StopAfter(8)
        )
    resumed = train(spec, workdir=tmp_path / "b", checkpoints=LocalCheckpointStore(tmp_path / "b" / "ck"))
    assert resumed["resumed_from_step"] == 6
    a, b = weights(tmp_path / "a" / "ck"), weights(tmp_path / "b" / "ck")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert straight["student"] == resumed["student"]


def test_batches_come_a_window_at_a_time(folders: dict[str, Path]) -> None:
    """The trainer's batches follow the stream's order, not a permutation of the whole split."""
    from core.engine.setup import build_run

    spec = spec_for(sharded(folders["mfeat/npy"]))
    data = prepare(spec.dataset, "classification", cache_bytes=1 << 18)
    run = build_run(spec, data)
    stream = data.train.stream
    assert stream is not None
    order = np.concatenate([batch.numpy() for batch in epoch_batches(run, 1)])
    expected = stream.order(spec.train.seed * 1_000_003 + 1)
    np.testing.assert_array_equal(order, expected[: len(order)])


def test_methods_that_read_the_whole_split_at_once_are_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="mfh_kd.*reads the whole training split"):
        train(spec_for(sharded(folders["mfeat/npz"]), method="mfh_kd"), workdir=tmp_path)
    with pytest.raises(DataError, match="probe fits on the whole training split"):
        probe(spec_for(sharded(folders["mfeat/npz"])))


def test_the_methods_the_api_refuses_on_shards_are_those_reading_the_whole_split() -> None:
    """The API refuses WHOLE_SPLIT_METHODS at submit (torch-free); the trainer refuses every objective
    that overrides begin_epoch: the two lists must be the same."""
    from core.objectives import OBJECTIVES
    from core.objectives.base import Objective
    from core.spec import METHOD_NAMES, WHOLE_SPLIT_METHODS

    reading = {name for name in METHOD_NAMES if OBJECTIVES.get(name).begin_epoch is not Objective.begin_epoch}
    assert reading == WHOLE_SPLIT_METHODS


# --- hostile and malformed folders: one line naming the folder or the file ---------------------------


def small(**changes: np.ndarray) -> dict[str, np.ndarray]:
    arrays = builtin("mfeat")
    return {key: arrays[key] for key in ("fou", "mor", "pix", "label", "class_names")} | changes


def refused(folder: Path, match: str, **kwargs: Any) -> None:
    with pytest.raises(DataError, match=match) as caught:
        prepare(spec_for(sharded(folder)).dataset, "classification", **kwargs)
    assert "\n" not in str(caught.value)


def test_a_folder_with_both_layouts_or_none_is_refused(tmp_path: Path) -> None:
    write_shards(small(), tmp_path / "both", rows_per_shard=500)
    write_shards(small(), tmp_path / "both", layout="npy")
    refused(tmp_path / "both", "both .npz shards and .npy arrays")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no data")
    refused(tmp_path / "empty", "holds no .npz shards and no .npy arrays")
    refused(tmp_path / "never-made", "holds no .npz shards and no .npy arrays")


def test_shards_that_disagree_are_refused_naming_the_shard(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_shards(small(), first, rows_per_shard=1000)
    np.savez(first / "part-00001.npz", **{k: v[1000:] for k, v in small().items() if k not in ("pix", "class_names")})
    refused(first, r"part-00001.npz: modality \['pix'\] not in this shard")
    write_shards(small(), second, rows_per_shard=1000)
    shifted = {k: (v[1000:] if k != "class_names" else v) for k, v in small().items()}
    np.savez(second / "part-00001.npz", **{**shifted, "fou": shifted["fou"][:, :10]})
    refused(second, r"part-00001.npz: modality 'fou' has per-sample shape \(10,\)")
    np.savez(second / "part-00001.npz", **{k: v for k, v in shifted.items() if k != "label"})
    refused(second, r"part-00001.npz: array 'label' must be in every shard or in none")
    np.savez(second / "part-00001.npz", **{**shifted, "class_names": shifted["class_names"][::-1]})
    refused(second, r"part-00001.npz: array 'class_names' differs from the first shard's")
    bad = shifted["pix"].copy()
    bad[3, 3] = np.nan
    np.savez(second / "part-00001.npz", **{**shifted, "pix": bad})
    refused(second, r"part-00001.npz: modality 'pix' has non-finite values in 1 samples")


def test_limits_on_files_and_sizes_name_what_is_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_shards(small(), tmp_path / "many", rows_per_shard=500)
    monkeypatch.setattr(shards, "MAX_SHARDS", 3)
    refused(tmp_path / "many", "holds more than 3 files; a sharded dataset may hold at most 3")
    monkeypatch.undo()
    size = (tmp_path / "many" / "part-00000.npz").stat().st_size
    refused(tmp_path / "many", f"part-00000.npz: the data is {size} bytes, over the limit of 1000", max_bytes=1000)
    # each file within the limit, the annotations together (as one file's would be) over it: refused from headers
    rng = np.random.default_rng(0)
    arrays = {"fou": rng.normal(size=(4000, 2)).astype(np.float32), "label": np.arange(4000) % 10}
    write_shards(arrays, tmp_path / "labels", rows_per_shard=500)
    largest = max(path.stat().st_size for path in (tmp_path / "labels").iterdir())
    with pytest.raises(DataError, match=r"part-0000[1-7].npz: arrays \['label'\] take 4000 bytes, over the"):
        shards.scan(
            sharded(tmp_path / "labels"), LocalOrS3Folders(), modalities=None, max_bytes=largest, cache_bytes=1 << 30
        )
    write_shards(arrays, tmp_path / "arrays", layout="npy")
    label_bytes = (tmp_path / "arrays" / "label.npy").stat().st_size
    with pytest.raises(DataError, match=r"\{label.npy\}: the data is"):
        shards.scan(
            sharded(tmp_path / "arrays"),
            LocalOrS3Folders(),
            modalities=None,
            max_bytes=label_bytes - 1,
            cache_bytes=1 << 30,
        )


def test_npy_files_are_checked_from_their_headers(tmp_path: Path) -> None:
    folder = tmp_path / "npy"
    write_shards(small(), folder, layout="npy")
    np.save(folder / "pix.npy", np.asfortranarray(small()["pix"]))
    refused(folder, r"pix.npy: is stored in Fortran order")
    np.save(folder / "pix.npy", small()["pix"][:-3])
    refused(folder, r"the .npy files have different sample counts")
    np.save(folder / "pix.npy", small()["pix"])
    cut = (folder / "pix.npy").read_bytes()[:-100]
    (folder / "pix.npy").write_bytes(cut)
    refused(folder, r"pix.npy: its header declares shape \(2000, 240\)")
    np.save(folder / "pix.npy", np.array([{"a": 1}] * 2000, dtype=object), allow_pickle=True)
    refused(folder, r"pix.npy: holds Python objects")
    (folder / "pix.npy").write_bytes(b"not an npy file at all")
    refused(folder, r"pix.npy: not a valid .npy file")


def test_what_a_header_promises_is_checked_before_a_row_is_read(tmp_path: Path) -> None:
    """Rows of no bytes (which would make any row count fit the file), structured or subarray dtypes,
    and a row larger than half the block cache are refused from the header alone."""
    folder = tmp_path / "npy"
    write_shards(small(), folder, layout="npy")
    np.save(folder / "pix.npy", np.zeros((2000, 0), dtype=np.float32))
    refused(folder, r"pix.npy: modality 'pix' must be \(N, F\) or \(N, C, L\) with no empty dimension")
    np.save(folder / "pix.npy", np.zeros(2000, dtype=[("a", "<f4"), ("b", "<f4")]))
    refused(folder, r"pix.npy: modality 'pix' must be numeric")
    np.save(folder / "pix.npy", small()["pix"])
    np.save(folder / "label.npy", small()["label"].astype("U40"))
    refused(folder, r"label.npy: array 'label' must be numeric")
    np.save(folder / "label.npy", small()["label"])
    refused(folder, r"one row takes 1288 bytes once read; the block cache holds 2000", cache_bytes=2000)
    zero = tmp_path / "zero"
    write_shards({**small(), "pix": np.zeros((2000, 0), dtype=np.float32)}, zero, rows_per_shard=1000)
    refused(zero, r"part-00000.npz: modality 'pix' must be \(N, F\)")


def test_a_link_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "linked"
    write_shards(small(), folder, rows_per_shard=1000)
    outside = tmp_path / "elsewhere.npz"
    (folder / "part-00001.npz").rename(outside)
    os.symlink(outside, folder / "part-00001.npz")
    refused(folder, "part-00001.npz: is a link to a file outside the dataset's folder")


def test_only_training_streams_and_uploads_open_only_on_the_service(folders: dict[str, Path]) -> None:
    spec = spec_for(sharded(folders["mfeat/npz"]))
    with pytest.raises(DataError, match="names a folder or prefix of shards"):
        load_raw(spec.dataset, "classification")
    with pytest.raises(DataError, match="an uploaded dataset is read by the mmkd service"):
        LocalOrS3Folders()("dataset:3/")


@pytest.mark.parametrize("layout", ["npz", "npy"])
def test_an_upload_summary_of_shards_is_the_summary_of_the_file(
    folders: dict[str, Path], layout: str, tmp_path: Path
) -> None:
    """Without a spec, every array but the annotations is a modality; shapes, dtypes, label and splits
    read as the one file's do; the digest is of the file list and changes with a file's size."""
    whole = summarise_npz("file", folders["basic_motions/file"])
    folder = folders[f"basic_motions/{layout}"]
    parts = summarise_shards(sharded(folder), LocalOrS3Folders())
    assert (parts.n_samples, parts.modalities, parts.label, parts.splits) == (
        whole.n_samples,
        whole.modalities,
        whole.label,
        whole.splits,
    )
    files = sorted(path.name for path in folder.iterdir())
    assert parts.shards == {"layout": layout, "files": len(files)}
    assert parts.size_bytes == sum((folder / name).stat().st_size for name in files)
    assert parts.as_json()["shards"] == parts.shards and "shards" not in whole.as_json()
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in files:
        (copy / name).write_bytes((folder / name).read_bytes())
    assert summarise_shards(sharded(copy), LocalOrS3Folders()).sha256 == parts.sha256
    arrays = builtin("basic_motions")
    if layout == "npy":
        np.save(copy / "label.npy", np.concatenate([arrays["label"][:-1], [0]]))  # same size: same digest
        assert summarise_shards(sharded(copy), LocalOrS3Folders()).sha256 == parts.sha256
        np.save(copy / "2bad.npy", arrays["accelerometer"])
    else:
        for name in files:
            with np.load(copy / name) as shard:
                held = {key: shard[key] for key in shard.files}
            np.savez(copy / name, **{**held, "2bad": held["accelerometer"]})  # type: ignore[arg-type]
    with pytest.raises(DataError, match="is not a modality name"):
        summarise_shards(sharded(copy), LocalOrS3Folders())


class CountingStore:
    """A store that counts the bytes read through it."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.read = inner, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        payload: bytes = self.inner.get_range(key, start, stop)
        self.read += len(payload)
        return payload

    def get_bytes(self, key: str) -> bytes:
        payload: bytes = self.inner.get_bytes(key)
        self.read += len(payload)
        return payload


@pytest.mark.parametrize("compressed", [False, True])
def test_the_first_pass_over_npz_shards_reads_their_directories_headers_and_annotations(
    tmp_path: Path, compressed: bool
) -> None:
    """Ranged reads of each shard's zip directory, its members' headers and its label: a small part of
    the shard; the second pass reads every byte. A compressed member's header is the start of its stream."""
    rng = np.random.default_rng(0)
    arrays = {"wide": rng.normal(size=(4000, 256)), "narrow": rng.normal(size=(4000, 3)), "label": np.arange(4000) % 2}
    folder = tmp_path / "shards"
    folder.mkdir()
    save = np.savez_compressed if compressed else np.savez
    for number, start in enumerate(range(0, 4000, 1000)):
        save(folder / f"part-{number}.npz", **{name: values[start : start + 1000] for name, values in arrays.items()})
    total = sum(path.stat().st_size for path in folder.iterdir())
    counted = CountingStore(LocalOrS3Folders()(f"{folder}/"))
    source, found = shards.scan(f"{folder}/", lambda _: counted, modalities=None, max_bytes=None, cache_bytes=64 << 20)
    assert source.modalities == ["narrow", "wide"] and source.shapes == {"narrow": (3,), "wide": (256,)}
    np.testing.assert_array_equal(found.label, arrays["label"])
    assert counted.read < 0.1 * total, (counted.read, total)  # 2 MB shards: a few reads of 64 KiB each
    counted.read = 0
    source.statistics(np.arange(4000))
    assert counted.read >= total


def test_prepared_streamed_data_pickles_without_its_cache(folders: dict[str, Path]) -> None:
    """A launcher pickles the prepared data for its ranks: the folder reopens there, the cache starts empty."""
    import pickle

    data: PreparedData = prepare(spec_for(sharded(folders["mfeat/npz"])).dataset, "classification")
    assert data.train.stream is not None
    data.train.take(np.arange(10))
    copy = pickle.loads(pickle.dumps(data))
    assert copy.train.stream is not None and copy.train.stream.cache._blocks == {}
    assert copy.train.stream.cache is copy.val.stream.cache  # one cache for the three splits
    np.testing.assert_array_equal(copy.val.take(np.arange(20))["fou"], data.val.take(np.arange(20))["fou"])
