"""The joint methods' terms one by one: which network feeds which term, and the warm-up and ramp.

Projection heads are set to the identity, so every term reduces to a textbook loss of the
representations themselves, and the student, teacher and auxiliary representations are chosen
so that pairing the wrong two changes the value.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from core.objectives.base import Batch, Forward
from core.objectives.joint import JointObjective
from core.objectives.losses import hinton_kd, info_nce
from core.objectives.mi_joint import MIJointObjective
from core.objectives.mi_joint_aux import MIJointAuxObjective
from core.spec import JobSpec

ALPHA, BETA, KD_WEIGHT, TAU = 0.7, 0.9, 0.6, 1.0
EYE = torch.eye(2)
SWAPPED = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
ALIGNED = math.log1p(math.exp(-1.0))  # InfoNCE of orthonormal rows matched to themselves, tau = 1
CROSSED = math.log1p(math.exp(1.0))  # ... and matched to each other's partner


def joint_objective(name: str, **method: Any) -> JointObjective:
    """A joint objective on 2-dim representations with identity projection heads."""
    spec = JobSpec.model_validate(
        {
            "name": "terms",
            "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["fac"]},
            "method": {
                "name": name,
                "alpha": ALPHA,
                **({"beta": BETA} if name == "mi_joint_aux" else {}),
                "temperature": TAU,
                "proj_layers": 1,
                "proj_dim": 2,
                **method,
            },
        }
    )
    objective = (MIJointAuxObjective if name == "mi_joint_aux" else MIJointObjective)(spec, repr_dim=2, n_train=4)
    for head in objective.modules():
        if isinstance(head, nn.Linear):
            with torch.no_grad():
                head.weight.copy_(EYE)
                head.bias.zero_()
    return objective


def representations(*, requires_grad: bool = False) -> Forward:
    """Teacher and auxiliary aligned (identity), the student crossed, and distinct logits."""
    z = {
        name: value.clone().requires_grad_(requires_grad)
        for name, value in (("teacher", EYE), ("auxiliary", EYE), ("student", SWAPPED))
    }
    out = {
        "student": torch.tensor([[0.0, 0.0], [1.0, -1.0]], requires_grad=requires_grad),
        "teacher": torch.tensor([[math.log(3.0), 0.0], [0.0, 2.0]], requires_grad=requires_grad),
    }
    return Forward(z=z, out=out, target={})


def terms_at(objective: JointObjective, epoch: int, fwd: Forward | None = None) -> dict[str, torch.Tensor]:
    """The objective's distillation terms for one batch of the fixed representations."""
    return objective.distill_terms(None, Batch({}, None, torch.arange(2)), fwd or representations(), epoch)  # type: ignore[arg-type]


def test_identity_heads_reduce_the_golden_values_to_aligned_and_crossed_pairs() -> None:
    assert info_nce(EYE, EYE, TAU).item() == pytest.approx(ALIGNED, abs=1e-6)
    assert info_nce(EYE, SWAPPED, TAU).item() == pytest.approx(CROSSED, abs=1e-6)


def test_mi_ts_pairs_the_teacher_with_the_student() -> None:
    terms = terms_at(joint_objective("mi_joint"), epoch=0)
    assert set(terms) == {"mi_ts"}
    assert terms["mi_ts"].item() == pytest.approx(ALPHA * CROSSED, abs=1e-6)


def test_mi_ta_pairs_the_teacher_with_the_auxiliary_model() -> None:
    terms = terms_at(joint_objective("mi_joint_aux"), epoch=0)
    assert set(terms) == {"mi_ts", "mi_ta"}
    assert terms["mi_ts"].item() == pytest.approx(ALPHA * CROSSED, abs=1e-6)
    assert terms["mi_ta"].item() == pytest.approx(BETA * ALIGNED, abs=1e-6)


@pytest.mark.parametrize(
    ("term", "trained", "untouched"),
    [("mi_ts", {"teacher", "student"}, {"auxiliary"}), ("mi_ta", {"teacher", "auxiliary"}, {"student"})],
)
def test_each_mutual_information_term_trains_exactly_its_two_networks(
    term: str, trained: set[str], untouched: set[str]
) -> None:
    fwd = representations(requires_grad=True)
    fwd.z = {name: z + 0.1 * torch.arange(4.0).reshape(2, 2) for name, z in fwd.z.items()}  # off the optimum
    for z in fwd.z.values():
        z.retain_grad()
    terms_at(joint_objective("mi_joint_aux"), 0, fwd)[term].backward()
    for name in trained:
        grad = fwd.z[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    for name in untouched:
        assert fwd.z[name].grad is None, name


def test_kd_term_is_hinton_kd_from_teacher_to_student_and_moves_only_the_student() -> None:
    fwd = representations(requires_grad=True)
    terms = terms_at(joint_objective("mi_joint", kd_weight=KD_WEIGHT, kd_temperature=2.0), 0, fwd)
    expected = KD_WEIGHT * hinton_kd("classification", fwd.out["student"], fwd.out["teacher"], 2.0)
    assert terms["kd"].item() == pytest.approx(expected.item(), abs=1e-6)
    terms["kd"].backward()
    assert fwd.out["teacher"].grad is None
    assert fwd.out["student"].grad is not None and fwd.out["student"].grad.abs().sum() > 0


def test_no_kd_term_without_kd_weight() -> None:
    assert "kd" not in terms_at(joint_objective("mi_joint_aux"), epoch=0)


@pytest.mark.parametrize(
    ("warmup", "ramp", "expected"),
    [
        (2, 3, [0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0]),
        (2, 0, [0.0, 0.0, 1.0, 1.0]),
        (0, 2, [0.5, 1.0, 1.0]),
        (0, 0, [1.0, 1.0]),
    ],
)
def test_ramp_is_zero_in_warm_up_then_linear_to_one(warmup: int, ramp: int, expected: list[float]) -> None:
    objective = joint_objective("mi_joint", warmup_epochs=warmup, ramp_epochs=ramp)
    assert [objective.ramp(epoch) for epoch in range(len(expected))] == pytest.approx(expected)


def test_every_distillation_term_is_off_in_warm_up_and_scaled_by_the_ramp() -> None:
    ramped = joint_objective("mi_joint_aux", warmup_epochs=1, ramp_epochs=2, kd_weight=KD_WEIGHT)
    full = terms_at(joint_objective("mi_joint_aux", kd_weight=KD_WEIGHT), epoch=0)
    assert set(full) == {"mi_ts", "mi_ta", "kd"}
    assert terms_at(ramped, 0) == {}  # warm-up: left out, not zero-weighted (no zero gradients for AdamW)
    for epoch, scale in ((1, 0.5), (2, 1.0), (5, 1.0)):
        terms = terms_at(ramped, epoch)
        for name, value in full.items():
            assert terms[name].item() == pytest.approx(scale * value.item(), abs=1e-6), (epoch, name)


@pytest.mark.parametrize(("layers", "kind"), [(1, nn.Linear), (2, nn.Sequential)])
def test_every_projection_head_follows_proj_layers(layers: int, kind: type[nn.Module]) -> None:
    objective = joint_objective("mi_joint_aux", proj_layers=layers)
    assert isinstance(objective, MIJointAuxObjective)
    heads = (
        objective.proj_ts_teacher,
        objective.proj_ts_student,
        objective.proj_ta_teacher,
        objective.proj_ta_auxiliary,
    )
    assert all(isinstance(head, kind) for head in heads)
