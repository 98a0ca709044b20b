"""A file split with train and test but no val (most public benchmarks): val is carved from train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from core.data import is_labelled, prepare
from core.engine.trainer import train
from core.spec import DatasetSpec, JobSpec

# Train rows per class: 100, 50, 20, 3 and 1; the test split holds 4 rows of every class.
TRAIN_PER_CLASS = (100, 50, 20, 3, 1)


def benchmark_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A train/test-only file whose classes have very different sizes."""
    rng = np.random.default_rng(seed)
    train_label = np.repeat(np.arange(len(TRAIN_PER_CLASS)), TRAIN_PER_CLASS)
    test_label = np.repeat(np.arange(len(TRAIN_PER_CLASS)), 4)
    order = rng.permutation(len(train_label) + len(test_label))  # shuffled rows: order must not matter
    label = np.concatenate([train_label, test_label])[order]
    split = np.array(["train"] * len(train_label) + ["test"] * len(test_label))[order]
    n = len(label)
    return {
        "a": rng.normal(size=(n, 5)).astype(np.float32),
        "b": rng.normal(size=(n, 2, 8)).astype(np.float32),
        "label": label,
        "split": split,
    }


def spec_for(path: Path, arrays: dict[str, np.ndarray], **extra: object) -> DatasetSpec:
    np.savez(path, **arrays)
    return DatasetSpec.model_validate({"uri": str(path), "primary": ["a"], "auxiliary": ["b"], **extra})


def test_val_is_carved_stratified_with_at_least_one_per_class(tmp_path: Path) -> None:
    arrays = benchmark_arrays()
    data = prepare(spec_for(tmp_path / "d.npz", arrays), "classification")
    # round(10%) per class, at least one where a class has two or more; the single-sample class keeps it.
    assert np.bincount(data.val.label, minlength=5).tolist() == [10, 5, 2, 1, 0]
    assert np.bincount(data.train.label, minlength=5).tolist() == [90, 45, 18, 2, 1]
    assert (arrays["split"][data.val.indices] == "train").all()  # carved from train, never from test
    assert np.array_equal(data.test.indices, np.flatnonzero(arrays["split"] == "test"))
    assert data.info["sizes"] == {"train": 156, "val": 18, "test": 20}
    assert data.info["split"] == "split array in the file, val a seeded stratified 10% of train (split_seed=0)"


def test_the_fraction_is_honoured(tmp_path: Path) -> None:
    data = prepare(spec_for(tmp_path / "d.npz", benchmark_arrays(), val_from_train_fraction=0.3), "classification")
    assert np.bincount(data.val.label, minlength=5).tolist() == [30, 15, 6, 1, 0]


def test_the_carve_is_seeded(tmp_path: Path) -> None:
    arrays = benchmark_arrays()
    first = prepare(spec_for(tmp_path / "d.npz", arrays), "classification")
    again = prepare(spec_for(tmp_path / "d.npz", arrays), "classification")
    other = prepare(spec_for(tmp_path / "d.npz", arrays, split_seed=1), "classification")
    assert np.array_equal(first.val.indices, again.val.indices)
    assert not np.array_equal(first.val.indices, other.val.indices)
    assert np.bincount(other.val.label, minlength=5).tolist() == [10, 5, 2, 1, 0]


def test_unlabelled_train_rows_stay_in_train(tmp_path: Path) -> None:
    arrays = benchmark_arrays()
    unlabelled = np.flatnonzero((arrays["split"] == "train") & (arrays["label"] == 0))[:40]
    arrays["label"][unlabelled] = -1
    data = prepare(spec_for(tmp_path / "d.npz", arrays), "classification")
    assert is_labelled(data.val.label).all()
    assert set(unlabelled) <= set(data.train.indices.tolist())
    assert np.bincount(data.val.label, minlength=5).tolist() == [6, 5, 2, 1, 0]  # 10% of the 60 labelled


def test_regression_gets_a_seeded_random_carve(tmp_path: Path) -> None:
    arrays = benchmark_arrays()
    arrays["label"] = np.linspace(0, 1, len(arrays["label"])).astype(np.float32)
    arrays["label"][np.flatnonzero(arrays["split"] == "train")[:14]] = np.nan  # 160 labelled train rows
    data = prepare(spec_for(tmp_path / "d.npz", arrays), "regression")
    assert len(data.val) == 16 and is_labelled(data.val.label).all()
    assert data.info["split"] == "split array in the file, val a seeded random 10% of train (split_seed=0)"


def test_a_file_with_its_own_val_is_used_as_is(tmp_path: Path) -> None:
    arrays = benchmark_arrays()
    arrays["split"][np.flatnonzero(arrays["split"] == "train")[:5]] = "val"
    data = prepare(spec_for(tmp_path / "d.npz", arrays), "classification")
    assert len(data.val) == 5 and data.info["split"] == "split array in the file"


def test_the_fraction_is_bounded() -> None:
    base = {"name": "mfeat", "primary": ["fou"], "auxiliary": ["fac"]}
    assert DatasetSpec.model_validate(base).val_from_train_fraction == 0.1
    for bad in (0.0, 0.5):
        with pytest.raises(ValidationError, match="val_from_train_fraction"):
            DatasetSpec.model_validate({**base, "val_from_train_fraction": bad})


def test_a_train_test_file_trains_end_to_end(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", **benchmark_arrays())
    spec = JobSpec.model_validate(
        {
            "name": "t",
            "dataset": {"uri": str(tmp_path / "d.npz"), "primary": ["a"], "auxiliary": ["b"]},
            "model": {"hidden_dim": 16, "repr_dim": 8},
            "method": {"name": "paper"},
            "train": {"epochs": 1, "batch_size": 32},
        }
    )
    summary = train(spec, workdir=tmp_path / "run")
    assert summary["data"]["sizes"] == {"train": 156, "val": 18, "test": 20}
    assert "val a seeded stratified 10% of train" in summary["data"]["split"]
    assert set(summary["validation"]["student"]) >= {"accuracy"}
