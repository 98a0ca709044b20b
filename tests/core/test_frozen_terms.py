"""The frozen-teacher methods (logit_kd, feature_kd, crd) and the base objective, term by term.

Phases: the teacher and the auxiliary model train for ``teacher_epochs``, then the teacher is frozen
and the student distils for ``train.epochs``. Embedding heads are set to the identity where a golden
value needs it, and CRD's memory banks are set by hand.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.objectives import OBJECTIVES
from core.objectives.base import Batch, Forward, Objective
from core.objectives.crd import CRDObjective
from core.objectives.feature_kd import FeatureKDObjective
from core.objectives.frozen import FrozenTeacherObjective
from core.objectives.losses import hinton_kd, info_nce, task_loss
from core.spec import JobSpec

EYE = torch.eye(2)
SWAPPED = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
CROSSED = math.log1p(math.exp(1.0))  # InfoNCE of orthonormal rows each matched to the other's partner, tau = 1


def spec_of(method: dict[str, Any], *, epochs: int = 2, task: str = "classification") -> JobSpec:
    """A validated spec (no data is loaded) for ``method``."""
    dataset: dict[str, Any] = {"name": "mfeat", "primary": ["fou"], "auxiliary": ["fac"]}
    if task == "retrieval":
        dataset = {"uri": "x.npz", "primary": ["a"], "auxiliary": ["b"], "retrieval_target": "text"}
    return JobSpec.model_validate(
        {"name": "terms", "dataset": dataset, "task": task, "method": method, "train": {"epochs": epochs}}
    )


def objective_of(
    method: dict[str, Any], *, epochs: int = 2, n_train: int = 4, task: str = "classification"
) -> Objective:
    """The registered objective for ``method`` on 2-dim representations, its 2x2 linear layers the identity."""
    spec = spec_of(method, epochs=epochs, task=task)
    objective = OBJECTIVES.get(method["name"])(spec, repr_dim=2, n_train=n_train)
    for layer in objective.modules():
        if isinstance(layer, nn.Linear) and layer.weight.shape == (2, 2):
            with torch.no_grad():
                layer.weight.copy_(EYE)
                layer.bias.zero_()
    return objective


def forward_of(*, requires_grad: bool = False) -> Forward:
    """Student crossed against teacher (z), and distinct logits for every network."""
    z = {"student": SWAPPED.clone(), "teacher": EYE.clone(), "auxiliary": EYE.clone()}
    out = {
        "student": torch.tensor([[0.0, 0.0], [1.0, -1.0]]),
        "teacher": torch.tensor([[math.log(3.0), 0.0], [0.0, 2.0]]),
        "auxiliary": torch.tensor([[2.0, 1.0], [-1.0, 0.5]]),
    }
    for value in [*z.values(), *out.values()]:
        value.requires_grad_(requires_grad)
    return Forward(z=z, out=out, target={})


def batch_of(labels: list[int] | None = None) -> Batch:
    """Rows 0 and 1 of the train split, labelled 0 and 1 by default."""
    return Batch({}, torch.tensor(labels or [0, 1]), torch.arange(2))


def test_frozen_teacher_phases_roles_and_schedule_windows() -> None:
    objective = objective_of({"name": "logit_kd", "teacher_epochs": 3}, epochs=2)
    assert isinstance(objective, FrozenTeacherObjective)
    assert objective.total_epochs == 5
    assert objective.window("teacher") == objective.window("auxiliary") == (0, 3)
    assert objective.window("student") == objective.window("method") == (3, 2)
    assert [objective.distilling(epoch) for epoch in range(5)] == [False, False, False, True, True]
    assert objective.roles(2) == {"student": "idle", "teacher": "train", "auxiliary": "train"}
    assert objective.roles(3) == {"student": "train", "teacher": "frozen", "auxiliary": "idle"}


def test_teacher_epochs_default_to_the_training_epochs() -> None:
    objective = objective_of({"name": "crd"}, epochs=4)
    assert isinstance(objective, FrozenTeacherObjective)
    assert objective.total_epochs == 8 and objective.window("student") == (4, 4)


def test_joint_objective_trains_every_network_over_the_whole_run() -> None:
    objective = objective_of({"name": "mi_joint"}, epochs=7)
    assert objective.total_epochs == 7
    assert objective.window("student") == objective.window("method") == (0, 7)
    assert objective.roles(0) == {"student": "train", "teacher": "train", "auxiliary": "train"}
    assert objective.discriminator_parameters() == [] and objective.discriminator_step(forward_of()) == {}


def test_losses_hold_the_task_term_of_each_training_network_plus_the_method_terms() -> None:
    fwd, labels = forward_of(), [1, 0]
    objective = objective_of({"name": "logit_kd", "teacher_epochs": 1, "kd_weight": 0.5, "kd_temperature": 2.0})
    phase_one = objective.losses(None, batch_of(labels), fwd, epoch=0)  # type: ignore[arg-type]
    phase_two = objective.losses(None, batch_of(labels), fwd, epoch=1)  # type: ignore[arg-type]
    assert set(phase_one) == {"task_teacher", "task_auxiliary"}
    assert set(phase_two) == {"task_student", "kd"}
    for name, value in {**phase_one, **phase_two}.items():
        if name.startswith("task_"):
            expected = F.cross_entropy(fwd.out[name.removeprefix("task_")], torch.tensor(labels))
            assert value.item() == pytest.approx(expected.item(), abs=1e-6), name
    kd = 0.5 * hinton_kd("classification", fwd.out["student"], fwd.out["teacher"], 2.0)
    assert phase_two["kd"].item() == pytest.approx(kd.item(), abs=1e-6)


def test_student_only_trains_three_networks_on_their_task_losses_alone() -> None:
    terms = objective_of({"name": "student_only"}).losses(None, batch_of(), forward_of(), epoch=0)  # type: ignore[arg-type]
    assert set(terms) == {"task_student", "task_teacher", "task_auxiliary"}


def test_retrieval_task_term_is_info_nce_against_the_target_encoder_at_tau_0_1() -> None:
    objective = objective_of({"name": "student_only"}, task="retrieval")
    fwd = Forward(z={}, out={"student": EYE}, target={"student": SWAPPED})
    value = objective.task_term("student", Batch({}, None, torch.arange(2)), fwd)
    assert value.item() == pytest.approx(info_nce(EYE, SWAPPED, 0.1).item(), abs=1e-6)
    assert value.item() == pytest.approx(math.log1p(math.exp(10.0)), abs=1e-4)


def test_logit_kd_is_silent_in_phase_one_and_weighted_hinton_kd_in_phase_two() -> None:
    objective = objective_of({"name": "logit_kd", "teacher_epochs": 1, "kd_weight": 0.3, "kd_temperature": 3.0})
    fwd = forward_of()
    assert objective.distill_terms(None, batch_of(), fwd, epoch=0) == {}  # type: ignore[arg-type]
    terms = objective.distill_terms(None, batch_of(), fwd, epoch=1)  # type: ignore[arg-type]
    expected = 0.3 * hinton_kd("classification", fwd.out["student"], fwd.out["teacher"], 3.0)
    assert terms["kd"].item() == pytest.approx(expected.item(), abs=1e-6)


def test_feature_kd_hint_golden_value_and_frozen_teacher() -> None:
    objective = objective_of({"name": "feature_kd", "teacher_epochs": 1, "feature_weight": 0.4})
    assert isinstance(objective, FeatureKDObjective)
    fwd = forward_of(requires_grad=True)
    fwd.z["student"] = (2 * SWAPPED).requires_grad_()
    assert objective.distill_terms(None, batch_of(), fwd, epoch=0) == {}  # type: ignore[arg-type]
    hint = objective.distill_terms(None, batch_of(), fwd, epoch=1)["hint"]  # type: ignore[arg-type]
    assert hint.item() == pytest.approx(0.4 * 2.5, abs=1e-6)  # identity regressor: mean of (2 swapped - eye)^2
    hint.backward()
    assert fwd.z["teacher"].grad is None
    assert fwd.z["student"].grad is not None and objective.regressor.weight.grad is not None


def test_crd_in_batch_golden_value_with_frozen_teacher_and_optional_kd() -> None:
    objective = objective_of(
        {"name": "crd", "teacher_epochs": 1, "alpha": 0.8, "temperature": 1.0, "proj_layers": 1, "proj_dim": 2}
    )
    assert isinstance(objective, CRDObjective)
    assert isinstance(objective.embed_student, nn.Linear) and isinstance(objective.embed_teacher, nn.Linear)
    assert "bank_student" not in objective.state_dict()  # in-batch negatives: no memory banks
    fwd = forward_of(requires_grad=True)
    assert objective.distill_terms(None, batch_of(), fwd, epoch=0) == {}  # type: ignore[arg-type]
    terms = objective.distill_terms(None, batch_of(), fwd, epoch=1)  # type: ignore[arg-type]
    assert set(terms) == {"crd"}
    assert terms["crd"].item() == pytest.approx(0.8 * CROSSED, abs=1e-6)
    terms["crd"].backward()
    assert fwd.z["teacher"].grad is None and fwd.z["student"].grad is not None
    with_kd = objective_of({"name": "crd", "teacher_epochs": 1, "kd_weight": 0.5, "kd_temperature": 2.0})
    kd = with_kd.distill_terms(None, batch_of(), forward_of(), epoch=1)["kd"]  # type: ignore[arg-type]
    expected = 0.5 * hinton_kd("classification", forward_of().out["student"], forward_of().out["teacher"], 2.0)
    assert kd.item() == pytest.approx(expected.item(), abs=1e-6)


def crd_with_banks(n_neg: int, momentum: float = 0.25) -> CRDObjective:
    """A CRD objective over two training samples with hand-set unit memory banks."""
    objective = objective_of(
        {
            "name": "crd",
            "teacher_epochs": 1,
            "alpha": 1.0,
            "temperature": 0.5,
            "proj_layers": 1,
            "proj_dim": 2,
            "n_neg": n_neg,
            "bank_momentum": momentum,
        },
        n_train=2,
    )
    assert isinstance(objective, CRDObjective)
    objective.bank_student.copy_(torch.tensor([[0.6, 0.8], [0.8, -0.6]]))
    objective.bank_teacher.copy_(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
    return objective


def test_crd_memory_banks_start_as_unit_vectors_one_per_training_sample() -> None:
    objective = objective_of({"name": "crd", "n_neg": 4, "proj_dim": 3}, n_train=5)
    assert isinstance(objective, CRDObjective)
    for bank in (objective.bank_student, objective.bank_teacher):
        assert bank.shape == (5, 3)
        torch.testing.assert_close(bank.norm(dim=1), torch.ones(5))


def test_crd_never_draws_a_sample_as_its_own_negative() -> None:
    objective = crd_with_banks(n_neg=64)
    torch.manual_seed(0)
    negatives = objective._sample_negatives(torch.tensor([0, 1]))
    assert negatives.shape == (2, 64)
    assert (negatives == torch.tensor([[1], [0]])).all()  # two samples: the other one, always


def test_crd_memory_bank_loss_golden_value_then_momentum_update() -> None:
    objective = crd_with_banks(n_neg=3, momentum=0.25)
    bank_s, bank_t = objective.bank_student.clone(), objective.bank_teacher.clone()
    e_s, e_t = SWAPPED, EYE  # identity heads, unit rows
    loss = objective.contrastive(e_s, e_t, torch.tensor([0, 1]))

    def anchor_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> float:
        pos, neg = float(anchor @ positive) / 0.5, float(anchor @ negative) / 0.5
        return -pos + math.log(math.exp(pos) + 3 * math.exp(neg))  # three copies of the only other sample

    student_side = sum(anchor_loss(e_s[i], e_t[i], bank_t[1 - i]) for i in range(2)) / 2
    teacher_side = sum(anchor_loss(e_t[i], e_s[i], bank_s[1 - i]) for i in range(2)) / 2
    assert loss.item() == pytest.approx((student_side + teacher_side) / 2, abs=1e-5)
    torch.testing.assert_close(objective.bank_student, F.normalize(0.25 * bank_s + 0.75 * e_s, dim=1))
    torch.testing.assert_close(objective.bank_teacher, F.normalize(0.25 * bank_t + 0.75 * e_t, dim=1))


def test_task_loss_averages_over_labelled_samples_only() -> None:
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)], [5.0, -5.0]])
    value = task_loss("classification", logits, torch.tensor([0, 1, -1]))
    assert value.item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_crd_with_one_negative_keeps_memory_banks_and_reads_the_batch_rows() -> None:
    objective = objective_of({"name": "crd", "n_neg": 1, "teacher_epochs": 1}, n_train=3)
    assert isinstance(objective, CRDObjective)
    assert {"bank_student", "bank_teacher"} <= set(objective.state_dict())
    terms = objective.losses(None, batch_of(), forward_of(), epoch=1)  # type: ignore[arg-type]
    assert set(terms) == {"task_student", "crd"} and math.isfinite(terms["crd"].item())


def test_crd_draws_every_other_sample_as_a_negative() -> None:
    objective = objective_of({"name": "crd", "n_neg": 300, "teacher_epochs": 1}, n_train=3)
    assert isinstance(objective, CRDObjective)
    torch.manual_seed(0)
    negatives = objective._sample_negatives(torch.tensor([0, 1, 2]))
    for row in range(3):
        assert set(negatives[row].tolist()) == {0, 1, 2} - {row}


def test_crd_memory_bank_update_touches_only_the_batch_rows() -> None:
    objective = objective_of(
        {"name": "crd", "n_neg": 2, "teacher_epochs": 1, "proj_layers": 1, "proj_dim": 2, "bank_momentum": 0.5},
        n_train=3,
    )
    assert isinstance(objective, CRDObjective)
    before_s, before_t = objective.bank_student.clone(), objective.bank_teacher.clone()
    objective.distill_terms(None, batch_of(), forward_of(), epoch=1)  # type: ignore[arg-type]
    torch.testing.assert_close(objective.bank_student[2], before_s[2])
    torch.testing.assert_close(objective.bank_teacher[2], before_t[2])
    torch.testing.assert_close(objective.bank_student[:2], F.normalize(0.5 * before_s[:2] + 0.5 * SWAPPED, dim=1))
    torch.testing.assert_close(objective.bank_teacher[:2], F.normalize(0.5 * before_t[:2] + 0.5 * EYE, dim=1))
