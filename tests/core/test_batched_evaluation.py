"""Evaluation in batches: a split is scored EVAL_ROWS rows at a time, with the metrics of one pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.data import prepare
from core.engine import trainer
from core.spec import JobSpec
from core.tracking import NullTracker

SPECS: dict[str, dict[str, Any]] = {
    "classification": {
        "name": "batched",
        "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["kar"]},
        "model": {"hidden_dim": 16, "repr_dim": 8},
        "method": {"name": "logit_kd", "teacher_epochs": 1},
        "train": {"epochs": 1, "batch_size": 64, "device": "cpu"},
        "checkpoint": {"every_epochs": None},
    },
    "sequences": {
        "name": "batched-seq",
        "dataset": {"name": "basic_motions", "primary": ["accelerometer"], "auxiliary": ["gyroscope"]},
        "model": {"hidden_dim": 16, "repr_dim": 8},
        "method": {"name": "paper"},
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu"},
        "checkpoint": {"every_epochs": None},
    },
}


def retrieval_spec(folder: Path) -> dict[str, Any]:
    """Queries and a text gallery driven by one latent: retrieval ranks every query against every
    gallery item of the split, so the batches' embeddings must all be gathered before scoring."""
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(150, 4)).astype(np.float32)
    np.savez(
        folder / "r.npz",
        a=np.hstack([latent[:, :2], rng.normal(size=(150, 6))]).astype(np.float32),
        b=(latent + 0.1 * rng.normal(size=(150, 4))).astype(np.float32),
        text=(latent @ rng.normal(size=(4, 12))).astype(np.float32),
    )
    return {
        "name": "batched-r",
        "dataset": {"uri": str(folder / "r.npz"), "primary": ["a"], "auxiliary": ["b"], "retrieval_target": "text"},
        "task": "retrieval",
        "model": {"hidden_dim": 16, "repr_dim": 8},
        "method": {"name": "paper"},
        "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
    }


@pytest.mark.parametrize("kind", [*sorted(SPECS), "retrieval"])
def test_batches_of_any_size_give_the_metrics_of_one_pass(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = JobSpec.model_validate(retrieval_spec(tmp_path) if kind == "retrieval" else SPECS[kind])
    run, _, _ = trainer.fit(spec, prepare(spec.dataset, spec.task), NullTracker(), None)
    whole = {split: trainer.evaluate(run, split) for split in ("val", "test")}
    outputs = trainer.student_outputs(run, "test")
    monkeypatch.setattr(trainer, "EVAL_ROWS", 7)  # val and test span several uneven batches
    for split in ("val", "test"):
        assert trainer.evaluate(run, split) == pytest.approx(whole[split], abs=1e-6)
    batched = trainer.student_outputs(run, "test")
    assert batched.shape == outputs.shape and batched.allclose(outputs, atol=1e-5)
