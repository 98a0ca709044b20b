"""Data: the built-in datasets from the real shipped files, the generic format and its checks."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import boto3
import numpy as np
import pytest
from live_servers import free_port

from core.data import MAX_CLASSES, is_labelled, prepare
from core.data.arrays import read_local_or_s3
from core.errors import DataError, StorageError
from core.spec import DatasetSpec


def builtin(name: str, primary: list[str], auxiliary: list[str], **extra: object) -> DatasetSpec:
    return DatasetSpec.model_validate({"name": name, "primary": primary, "auxiliary": auxiliary, **extra})


def write_npz(path: Path, **arrays: np.ndarray) -> DatasetSpec:
    np.savez(path, **arrays)
    return DatasetSpec(uri=str(path), primary=["a"], auxiliary=["b"])


def make_arrays(n: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a": rng.normal(size=(n, 5)).astype(np.float32),
        "b": rng.normal(size=(n, 2, 8)).astype(np.float32),
        "label": np.arange(n) % 3,
    }


def test_mfeat_is_the_real_uci_data() -> None:
    data = prepare(builtin("mfeat", ["fou", "zer", "mor"], ["fac", "pix", "kar"]), "classification")
    assert data.shapes == {"fou": (76,), "zer": (47,), "mor": (6,), "fac": (216,), "pix": (240,), "kar": (64,)}
    assert (len(data.train), len(data.val), len(data.test)) == (1200, 400, 400)
    assert data.output_dim == 10 and data.class_names == [str(d) for d in range(10)]
    # 200 digits per class in the original; the split is stratified.
    assert np.bincount(data.test.label).tolist() == [40] * 10


def test_basic_motions_keeps_the_archive_split() -> None:
    data = prepare(builtin("basic_motions", ["accelerometer"], ["gyroscope"]), "classification")
    assert data.shapes == {"accelerometer": (3, 100), "gyroscope": (3, 100)}
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 40)
    assert data.info["split"] == "split array in the file"


def test_split_is_seeded_and_recorded() -> None:
    spec = builtin("mfeat", ["fou"], ["fac"])
    first, second = prepare(spec, "classification"), prepare(spec, "classification")
    assert np.array_equal(first.test.indices, second.test.indices)
    other = prepare(builtin("mfeat", ["fou"], ["fac"], split_seed=1), "classification")
    assert not np.array_equal(first.test.indices, other.test.indices)
    assert "split_seed=0" in str(first.info["split"])


def test_label_fraction_masks_train_labels_stratified() -> None:
    data = prepare(builtin("mfeat", ["fou"], ["fac"], label_fraction=0.1), "classification")
    labelled = data.train.label[is_labelled(data.train.label)]
    assert len(data.train) == 1200 and len(labelled) == 120
    assert np.bincount(labelled).tolist() == [12] * 10
    assert is_labelled(data.val.label).all() and is_labelled(data.test.label).all()


def test_unlabelled_samples_can_be_dropped() -> None:
    data = prepare(builtin("mfeat", ["fou"], ["fac"], label_fraction=0.1, keep_unlabelled=False), "classification")
    assert len(data.train) == 120 and is_labelled(data.train.label).all()


def test_normalisation_uses_training_rows_only(tmp_path: Path) -> None:
    arrays = make_arrays()
    spec = write_npz(tmp_path / "d.npz", **arrays)
    data = prepare(spec, "classification")
    train_a = arrays["a"][data.train.indices]
    assert np.allclose(data.normaliser.mean["a"], train_a.mean(axis=0), atol=1e-6)
    assert np.allclose(data.train.modalities["a"].mean(axis=0), 0, atol=1e-5)
    assert data.normaliser.mean["b"].shape == (2, 1)  # per channel for sequences


def test_generic_file_with_its_own_split_and_unlabelled_rows(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["label"] = arrays["label"].copy()
    arrays["label"][:10] = -1
    arrays["split"] = np.array(["train"] * 40 + ["val"] * 10 + ["test"] * 10)
    data = prepare(write_npz(tmp_path / "d.npz", **arrays), "classification")
    assert len(data.train) == 40 and int((~is_labelled(data.train.label)).sum()) == 10


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("b"), "modality ['b'] not in the file; it has ['a']"),
        (lambda a: a.update(b=a["b"][:50]), "different sample counts"),
        (lambda a: a.update(a=np.array(["x"] * 60)), "modality 'a' must be numeric"),
        (lambda a: a.update(a=np.where(np.arange(60)[:, None] == 3, np.nan, a["a"])), "non-finite values in 1 samples"),
        (lambda a: a.update(a=np.zeros((60, 2, 2, 2))), "must be 2-D (N, F) or 3-D (N, C, L)"),
        (lambda a: a.update(label=np.arange(60) * 0.5), "one integer class per sample"),
        (lambda a: a.update(label=np.full(60, -2)), "below -1"),
        (lambda a: a.pop("label"), "array 'label' is required"),
        (lambda a: a.update(label=np.arange(59)), "'label' has 59 samples"),
        (lambda a: a.update(split=np.array(["train"] * 60)), "array 'split' names no test sample"),
        (lambda a: a.update(split=np.array(["val"] * 30 + ["test"] * 30)), "array 'split' names no train sample"),
        (lambda a: a.update(split=np.array(["val"] * 60)), "names no train and no test sample"),
        (lambda a: a.update(split=np.array(["dev"] * 60)), "values in ['train', 'val', 'test']"),
    ],
)
def test_bad_arrays_are_named(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    arrays = make_arrays()
    change(arrays)
    spec = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match="bad.npz") as info:
        prepare(spec, "classification")
    assert message in str(info.value)


def test_unlabelled_test_rows_are_refused(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["label"] = np.where(np.arange(60) == 59, -1, arrays["label"])
    arrays["split"] = np.array(["train"] * 40 + ["val"] * 10 + ["test"] * 10)
    with pytest.raises(DataError, match="every test sample needs a label"):
        prepare(write_npz(tmp_path / "d.npz", **arrays), "classification")


def test_missing_file_and_garbage_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        prepare(DatasetSpec(uri=str(tmp_path / "nope.npz"), primary=["a"], auxiliary=["b"]), "classification")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: not a valid .npz"):
        prepare(DatasetSpec(uri=str(tmp_path / "junk.npz"), primary=["a"], auxiliary=["b"]), "classification")


def test_pickled_object_arrays_are_refused_not_executed(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["a"] = np.array([{"x": 1}] * 60, dtype=object)
    np.savez(tmp_path / "p.npz", **arrays)
    with pytest.raises(DataError, match="without pickled objects"):
        prepare(DatasetSpec(uri=str(tmp_path / "p.npz"), primary=["a"], auxiliary=["b"]), "classification")


def test_regression_and_multilabel_labels(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["label"] = np.linspace(0, 1, 60).astype(np.float32)
    arrays["label"][:5] = np.nan
    data = prepare(write_npz(tmp_path / "r.npz", **arrays), "regression")
    assert data.output_dim == 1 and int((~is_labelled(data.train.label)).sum()) == 5
    arrays["label"] = (np.arange(120).reshape(60, 2) % 3 == 0).astype(np.float32)
    assert prepare(write_npz(tmp_path / "m.npz", **arrays), "multilabel").output_dim == 2
    arrays["label"] = np.full((60, 2), 0.5, dtype=np.float32)
    with pytest.raises(DataError, match="multilabel 'label' must be"):
        prepare(write_npz(tmp_path / "m2.npz", **arrays), "multilabel")


def test_s3_uri_through_the_configured_endpoint(tmp_path: Path, moto_server) -> None:  # type: ignore[no-untyped-def]
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint_url)
    s3.create_bucket(Bucket="data")
    np.savez(tmp_path / "d.npz", **make_arrays())
    s3.upload_file(str(tmp_path / "d.npz"), "data", "sets/d.npz")
    read = partial(read_local_or_s3, endpoint_url=moto_server.endpoint_url, max_attempts=1)
    spec = DatasetSpec(uri="s3://data/sets/d.npz", primary=["a"], auxiliary=["b"])
    assert len(prepare(spec, "classification", read=read).train) == 36
    with pytest.raises(DataError, match="s3://data/missing.npz: no such file or object"):
        prepare(DatasetSpec(uri="s3://data/missing.npz", primary=["a"], auxiliary=["b"]), "classification", read=read)
    with pytest.raises(DataError, match="over the limit of 100 bytes"):
        prepare(spec, "classification", read=read, max_bytes=100)


def test_an_unreachable_s3_endpoint_is_a_retryable_storage_error() -> None:
    read = partial(read_local_or_s3, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=2, timeout_s=1)
    spec = DatasetSpec(uri="s3://data/sets/d.npz", primary=["a"], auxiliary=["b"])
    with pytest.raises(StorageError) as caught:
        prepare(spec, "classification", read=read)
    assert caught.value.retryable


def test_seeded_split_that_leaves_val_empty_is_refused(tmp_path: Path) -> None:
    arrays = make_arrays(n=12)
    arrays["label"] = np.arange(12) % 6  # 2 samples per class: round(2 * 0.2) = 0 for val
    with pytest.raises(DataError, match="left val or test empty"):
        prepare(write_npz(tmp_path / "tiny.npz", **arrays), "classification")


def test_regression_labels_of_rank_three_are_refused(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["label"] = np.zeros((60, 2, 2), dtype=np.float32)
    with pytest.raises(DataError, match=r"'label' must be \(N,\) or \(N, K\)"):
        prepare(write_npz(tmp_path / "r3.npz", **arrays), "regression")


@pytest.mark.parametrize("dtype", [np.int64, np.float64, np.uint64])
def test_a_huge_class_id_is_refused_before_any_per_class_memory(tmp_path: Path, dtype: type) -> None:
    arrays = make_arrays()
    arrays["label"] = np.where(np.arange(60) == 7, 2_000_000_000, arrays["label"]).astype(dtype)
    spec = write_npz(tmp_path / "huge.npz", **arrays)
    started = time.monotonic()
    with pytest.raises(DataError, match="huge.npz") as info:
        prepare(spec, "classification")
    assert time.monotonic() - started < 5.0  # no 2e9-class allocation happened
    assert f"array 'label' has class id 2000000000; the limit is {MAX_CLASSES} classes" in str(info.value)


def test_the_class_limit_is_exclusive_and_can_be_set_by_the_caller(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["label"] = np.arange(60) % 5  # class ids 0..4: five classes
    spec = write_npz(tmp_path / "d.npz", **arrays)
    assert prepare(spec, "classification", max_classes=5).output_dim == 5
    with pytest.raises(DataError, match="class id 4; the limit is 4 classes"):
        prepare(spec, "classification", max_classes=4)


def test_too_many_class_names_are_refused(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays["class_names"] = np.array([f"c{i}" for i in range(6)])
    with pytest.raises(DataError, match="'class_names' has 6 names; the limit is 5 classes"):
        prepare(write_npz(tmp_path / "d.npz", **arrays), "classification", max_classes=5)


def test_a_file_over_max_bytes_is_refused_without_reading_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spec = write_npz(tmp_path / "big.npz", **make_arrays())
    size = (tmp_path / "big.npz").stat().st_size
    assert len(prepare(spec, "classification", max_bytes=size).train) == 36  # the limit is inclusive

    def no_reading(self: Path) -> bytes:
        raise AssertionError(f"{self} was read")

    monkeypatch.setattr(Path, "read_bytes", no_reading)
    with pytest.raises(DataError) as info:
        prepare(spec, "classification", max_bytes=size - 1)
    assert str(info.value) == f"{tmp_path / 'big.npz'}: the data is {size} bytes, over the limit of {size - 1} bytes"


def test_max_bytes_also_bounds_a_built_in_dataset() -> None:
    with pytest.raises(DataError, match="built-in dataset mfeat: the data is .* over the limit of 1000 bytes"):
        prepare(builtin("mfeat", ["fou"], ["fac"]), "classification", max_bytes=1000)
