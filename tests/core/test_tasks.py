"""Multi-label, regression and retrieval tasks end to end on small generic .npz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.engine.export import predict_file
from core.engine.trainer import train
from core.spec import JobSpec


def synthetic(path: Path, task: str, n: int = 120) -> Path:
    """Two modalities driven by a shared latent; labels/targets/text derived from it."""
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(n, 4)).astype(np.float32)
    arrays = {
        "a": np.hstack([latent[:, :2], rng.normal(size=(n, 6))]).astype(np.float32),
        "b": np.repeat(latent[:, :, None], 10, axis=2) + 0.1 * rng.normal(size=(n, 4, 10)).astype(np.float32),
    }
    if task == "multilabel":
        label = (latent[:, :3] > 0).astype(np.float32)
        label[:10] = np.nan  # unlabelled rows
    elif task == "regression":
        label = latent.sum(axis=1).astype(np.float32)
        label[:10] = np.nan
    else:
        label = None
        arrays["text"] = (latent @ rng.normal(size=(4, 12))).astype(np.float32)
    if label is not None:
        arrays["label"] = label
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("task", "metrics"),
    [
        ("multilabel", {"mean_ap", "f1"}),
        ("regression", {"mae", "pearson_r"}),
        ("retrieval", {"r@1", "r@5", "r@10", "median_rank"}),
    ],
)
def test_task_trains_evaluates_and_exports(task: str, metrics: set[str], tmp_path: Path) -> None:
    dataset = {"uri": str(synthetic(tmp_path / "d.npz", task)), "primary": ["a"], "auxiliary": ["b"]}
    if task == "retrieval":
        dataset["retrieval_target"] = "text"
    spec = JobSpec.model_validate(
        {
            "name": "t",
            "dataset": dataset,
            "task": task,
            "model": {"hidden_dim": 16, "repr_dim": 8},
            "method": {"name": "paper"},
            "train": {"epochs": 3, "batch_size": 32},
        }
    )
    summary = train(spec, workdir=tmp_path / "run")
    assert set(summary["student"]) == metrics
    assert all(np.isfinite(value) for value in summary["student"].values())
    np.savez(tmp_path / "primary.npz", a=np.load(tmp_path / "d.npz")["a"][:7])
    prediction = predict_file(tmp_path / "run" / "student", tmp_path / "primary.npz")["prediction"]
    assert len(prediction) == 7
