"""The distillability probe on data whose answer is known: the label lives in the primary modality,
or only in the auxiliary one. The probe must tell the two apart, and say so in its verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.engine.probe import HIGH, LOW, probe, summarise, verdict
from core.spec import JobSpec


def synthetic(tmp_path: Path, *, informative: str) -> str:
    """400 samples, 4 classes; ``informative`` ("p" or "x") carries the class, the other modality is noise."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    centres = rng.normal(0.0, 5.0, (4, 6))
    signal = (centres[labels] + rng.normal(0.0, 1.0, (400, 6))).astype(np.float32)
    noise = rng.normal(0.0, 1.0, (400, 6)).astype(np.float32)
    arrays = {"p": signal if informative == "p" else noise, "x": signal if informative == "x" else noise}
    path = tmp_path / f"{informative}.npz"
    np.savez(path, label=labels, **arrays)
    return str(path)


def spec_for(uri: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "probe",
            "dataset": {"uri": uri, "primary": ["p"], "auxiliary": ["x"]},
            "model": {"hidden_dim": 16, "repr_dim": 16, "dropout": 0.0},
            "method": {"name": "student_only"},
            "train": {"epochs": 15, "batch_size": 64, "lr": 3e-3, "seed": 0, "device": "cpu"},
        }
    )


def test_the_probe_tells_a_shared_label_from_an_auxiliary_only_one(tmp_path: Path) -> None:
    shared = probe(spec_for(synthetic(tmp_path, informative="p")))
    hidden = probe(spec_for(synthetic(tmp_path, informative="x")))
    for result in (shared, hidden):
        assert result["teacher_val"]["accuracy"] > 0.6  # chance is 0.25: the teacher sees both and learns either way
        assert result["teacher_epochs"] == 15 and set(result["sets"]) == {"p"}
        assert result["steps"] % 15 == 0 < result["steps"]
    assert shared["weighted_r2"] >= HIGH and hidden["weighted_r2"] < LOW
    assert "little from distillation" in hidden["verdict"]
    # The teacher as the primary modality reproduces it: nearly the teacher when the label lives there,
    # near chance (0.25) when it lives in the auxiliary modality only; the student alone likewise.
    assert shared["reachable_val"]["accuracy"] > 0.6 and hidden["reachable_val"]["accuracy"] < 0.45
    assert hidden["student_val"]["accuracy"] < 0.45
    for result in (shared, hidden):
        assert result["room"] == pytest.approx(result["reachable_val"]["accuracy"] - result["student_val"]["accuracy"])
    assert shared["sets"]["p"]["decisive_general_share"] > 0.5 > hidden["sets"]["p"]["decisive_general_share"]


def test_the_probe_reports_each_primary_modality_and_all_together(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    arrays = {name: rng.normal(0.0, 1.0, (300, 4)).astype(np.float32) for name in ("a", "b", "x")}
    arrays["a"][:, 0] += 3.0 * labels
    np.savez(tmp_path / "three.npz", label=labels, **arrays)
    spec = spec_for(str(tmp_path / "three.npz")).model_copy(deep=True)
    spec = JobSpec.model_validate(
        {
            **spec.model_dump(mode="json"),
            "dataset": {"uri": str(tmp_path / "three.npz"), "primary": ["a", "b"], "auxiliary": ["x"]},
        }
    )
    result = probe(spec)
    assert list(result["sets"]) == ["all primary", "a", "b"]
    assert result["weighted_r2"] == result["sets"]["all primary"]["weighted_r2"]
    assert result["sets"]["a"]["weighted_r2"] > result["sets"]["b"]["weighted_r2"]


def test_summary_weights_by_decisiveness_and_falls_back_to_the_plain_mean() -> None:
    r2 = torch.tensor([0.9, 0.1, 0.6])
    weighted = summarise(r2, torch.tensor([1.0, 3.0, 0.0]))
    assert weighted["general_share"] == pytest.approx(2 / 3)
    assert weighted["decisive_general_share"] == pytest.approx(0.25)
    assert weighted["weighted_r2"] == pytest.approx((0.9 + 0.3) / 4)
    plain = summarise(r2, torch.zeros(3))
    assert plain["decisive_general_share"] is None and plain["weighted_r2"] == pytest.approx(1.6 / 3)
    assert "little" in verdict(LOW - 0.01, room=0.2)  # nothing reproducible: room does not matter
    assert "expect no gain" in verdict(HIGH, room=0.01) and "expect no gain" in verdict(HIGH, room=-0.05)
    assert "can transfer" in verdict(HIGH, room=0.02) and "modest" in verdict(LOW, room=0.02)
    assert "expect no gain" in verdict(HIGH, room=0.3, threshold=0.5)  # an error metric's relative threshold


def test_retrieval_has_no_probe(tmp_path: Path) -> None:
    spec = JobSpec.model_validate(
        {
            "name": "r",
            "task": "retrieval",
            "dataset": {"uri": "x.npz", "primary": ["a"], "auxiliary": ["b"], "retrieval_target": "c"},
            "method": {"name": "student_only"},
        }
    )
    with pytest.raises(ValueError, match="retrieval has none"):
        probe(spec)


def test_kind_probe_is_a_spec_field_hash_neutral_as_train_and_refused_for_retrieval() -> None:
    base = {
        "name": "k",
        "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["kar"]},
        "method": {"name": "logit_kd"},
    }
    plain = JobSpec.model_validate(base)
    assert plain.kind == "train" and plain.spec_hash() == JobSpec.model_validate({**base, "kind": "train"}).spec_hash()
    assert JobSpec.model_validate({**base, "kind": "probe"}).spec_hash() != plain.spec_hash()
    retrieval = {
        "name": "r",
        "kind": "probe",
        "task": "retrieval",
        "dataset": {"uri": "x.npz", "primary": ["a"], "auxiliary": ["b"], "retrieval_target": "c"},
        "method": {"name": "student_only"},
    }
    with pytest.raises(ValueError, match="kind 'probe' needs a task with a prediction head"):
        JobSpec.model_validate(retrieval)
