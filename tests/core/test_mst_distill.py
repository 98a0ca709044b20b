"""mst_distill, stage by stage: golden values worked out by hand, the gradients each term may and may
not send, the stage schedule and its optimiser groups.

The experts are stand-ins with a fixed representation and an identity head, and the masks are fixed
where a golden value needs it, so each expected value follows from the formulas in the module's
docstring alone.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from core.engine.setup import parameter_groups, schedule_windows
from core.models.network import Networks, build_networks
from core.objectives import OBJECTIVES
from core.objectives.base import Batch, Forward
from core.objectives.losses import hinton_kd
from core.objectives.mst_distill import MaskNet, MSTDistillObjective, balance
from core.spec import JobSpec, ModelSpec


def spec_of(method: dict[str, Any], *, epochs: int = 8, repr_dim: int = 2) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "mst",
            "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["fac"]},
            "model": {"repr_dim": repr_dim},
            "method": {"name": "mst_distill", **method},
            "train": {"epochs": epochs},
        }
    )


def objective_of(**method: Any) -> MSTDistillObjective:
    """Stages: co-training epochs 0-7, masks 8-9, routed 10-17 unless ``method`` says otherwise."""
    method = {"cotrain_epochs": 8, "mask_epochs": 2, **method}
    objective = OBJECTIVES.get("mst_distill")(spec_of(method), repr_dim=2, n_train=2, output_dim=2)
    assert isinstance(objective, MSTDistillObjective)
    return objective


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def softmax(logits: list[float], temperature: float = 1.0) -> list[float]:
    exp = [math.exp(v / temperature) for v in logits]
    return [v / sum(exp) for v in exp]


def hinton(target: list[list[float]], student: list[list[float]], temperature: float) -> float:
    """T^2 KL(softmax(target/T) || softmax(student/T)), mean over rows."""
    rows = [kl(softmax(t, temperature), softmax(s, temperature)) for t, s in zip(target, student, strict=True)]
    return temperature**2 * sum(rows) / len(rows)


class Expert(nn.Module):
    """A frozen network's stand-in: a fixed representation (an encoder parameter scales it) and an identity head."""

    def __init__(self, z: list[list[float]]) -> None:
        super().__init__()
        self.z = torch.tensor(z)
        self.encoder = nn.Parameter(torch.ones(()))
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.zero_()

    def represent(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.z * self.encoder


class Experts(nn.Module):
    def __init__(self, teacher: list[list[float]], auxiliary: list[list[float]]) -> None:
        super().__init__()
        self.teacher, self.auxiliary = Expert(teacher), Expert(auxiliary)

    def named_networks(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher, "auxiliary": self.auxiliary}


class FixedMask(nn.Module):
    """A mask that ignores its input: ``scale * values`` (scale a parameter, so gradients can be seen)."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = torch.tensor(values)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (self.values * self.scale).expand_as(features)


TEACHER_Z = [[1.0, 2.0], [2.0, 0.0]]
AUX_Z = [[0.0, 1.0], [3.0, 1.0]]
BATCH = Batch({}, torch.tensor([0, -1]), torch.arange(2))  # the unlabelled row counts in every KL


def student_forward(logits: list[list[float]]) -> Forward:
    return Forward(z={}, out={"student": torch.tensor(logits, requires_grad=True)}, target={})


def identity_gate(objective: MSTDistillObjective) -> None:
    """Gate logits = the student's logits (the teacher wins where class 0 leads, the auxiliary model otherwise)."""
    first, second = objective.gate[0], objective.gate[1]
    assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
        first.bias.zero_()
        second.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
        second.bias.zero_()


# --- schedule -------------------------------------------------------------------------------------


def test_stages_roles_and_default_lengths() -> None:
    objective = OBJECTIVES.get("mst_distill")(spec_of({}), repr_dim=2, n_train=2, output_dim=2)
    assert isinstance(objective, MSTDistillObjective)  # train.epochs 8: co-training 2, masks 2, routed 8
    assert (objective.cotrain_epochs, objective.mask_epochs, objective.total_epochs) == (2, 2, 12)
    assert [objective.stage(e) for e in (0, 1, 2, 3, 4, 11)] == [1, 1, 2, 2, 3, 3]
    assert objective.roles(1) == {"student": "train", "teacher": "train", "auxiliary": "train"}
    assert objective.roles(2) == {"student": "frozen", "teacher": "idle", "auxiliary": "idle"}
    assert objective.roles(4) == {"student": "train", "teacher": "idle", "auxiliary": "idle"}
    assert objective.distilling(0) and objective.distilling(11)
    short = OBJECTIVES.get("mst_distill")(spec_of({}, epochs=3), repr_dim=2, n_train=2, output_dim=2)
    assert (short.cotrain_epochs, short.mask_epochs) == (1, 1)  # at least one epoch each
    ten = OBJECTIVES.get("mst_distill")(spec_of({}, epochs=10), repr_dim=2, n_train=2, output_dim=2)
    assert (ten.cotrain_epochs, ten.mask_epochs, ten.total_epochs) == (2, 2, 14)  # whole epochs
    assert all(type(n) is int for n in (ten.cotrain_epochs, ten.mask_epochs, ten.total_epochs))
    with pytest.raises(AssertionError, match="^the gate reads the student's logits$"):
        OBJECTIVES.get("mst_distill")(spec_of({}), repr_dim=2, n_train=2)
    assert objective_of(cotrain_epochs=5, mask_epochs=3).total_epochs == 16


def test_each_group_trains_in_its_own_stage() -> None:
    objective = objective_of(cotrain_epochs=3, mask_epochs=2)  # stages: 0-2, 3-4, 5-12
    spec = spec_of({"cotrain_epochs": 3, "mask_epochs": 2})
    nets = build_networks(
        {"fou": (4,), "fac": (3,)}, primary=["fou"], auxiliary=["fac"], spec=ModelSpec(repr_dim=2), output_dim=2
    )
    groups = parameter_groups(nets, objective)
    assert [group["name"] for group in groups] == ["student", "teacher", "auxiliary", "masks", "gate"]
    assert {id(p) for p in groups[3]["params"]} == {id(p) for p in objective.masks.parameters()}
    assert {id(p) for p in groups[4]["params"]} == {id(p) for p in objective.gate.parameters()}
    windows = dict(zip([g["name"] for g in groups], schedule_windows(objective, groups), strict=True))
    assert spec.train.scheduler == "cosine"
    assert windows["teacher"](0) == 1.0 and windows["teacher"](3) == 0.0  # stage 1 only
    assert windows["masks"](3) == 1.0 and 0.0 < windows["masks"](4) < 1.0 and windows["masks"](5) == 0.0
    assert windows["student"](2) == 1.0 and windows["student"](5) == 1.0 and windows["student"](9) < 1.0
    assert windows["gate"](5) == 1.0 and windows["gate"](13) == 0.0


# --- stage 1 ----------------------------------------------------------------------------------------


def test_stage_one_sums_the_kl_toward_the_other_two() -> None:
    objective = objective_of(kd_weight=0.5, kd_temperature=2.0)
    out = {
        "student": [[0.0, 0.0], [1.0, -1.0]],
        "teacher": [[math.log(3.0), 0.0], [0.0, 2.0]],
        "auxiliary": [[2.0, 1.0], [-1.0, 0.5]],
    }
    fwd = Forward(z={}, out={k: torch.tensor(v, requires_grad=True) for k, v in out.items()}, target={})
    terms = objective.distill_terms(None, BATCH, fwd, 0)  # type: ignore[arg-type]
    for name in out:
        expected = 0.5 * sum(hinton(out[o], out[name], 2.0) for o in out if o != name)
        assert terms[f"mutual_{name}"].item() == pytest.approx(expected, abs=1e-6), name
    terms["mutual_student"].backward()
    assert fwd.out["student"].grad is not None and fwd.out["teacher"].grad is None


# --- stage 2 ----------------------------------------------------------------------------------------


def test_stage_two_moves_each_masked_expert_toward_the_student() -> None:
    objective = objective_of(kd_temperature=2.0)
    objective.masks["teacher"] = FixedMask([0.5, 1.0])
    objective.masks["auxiliary"] = FixedMask([1.0, 0.25])
    experts = Experts(TEACHER_Z, AUX_Z)
    student = [[0.0, 0.0], [1.0, 0.0]]
    terms = objective.distill_terms(experts, BATCH, student_forward(student), 8)  # type: ignore[arg-type]
    assert set(terms) == {"mask_teacher", "mask_auxiliary"}
    masked_teacher = [[0.5, 2.0], [1.0, 0.0]]
    masked_aux = [[0.0, 0.25], [3.0, 0.25]]
    # The student's logits are the target; the masked expert is what moves.
    assert terms["mask_teacher"].item() == pytest.approx(hinton(student, masked_teacher, 2.0), abs=1e-6)
    assert terms["mask_auxiliary"].item() == pytest.approx(hinton(student, masked_aux, 2.0), abs=1e-6)


def test_stage_two_gradients_reach_the_mask_and_nothing_else() -> None:
    objective = objective_of()
    objective.masks["teacher"] = mask = FixedMask([0.5, 1.0])
    experts = Experts(TEACHER_Z, AUX_Z)
    fwd = student_forward([[0.0, 0.0], [1.0, 0.0]])
    terms = objective.distill_terms(experts, BATCH, fwd, 8)  # type: ignore[arg-type]
    terms["mask_teacher"].backward()
    assert mask.scale.grad is not None and mask.scale.grad.abs() > 0
    assert experts.teacher.head.weight.grad is None and experts.teacher.encoder.grad is None
    assert fwd.out["student"].grad is None


# --- stage 3 ----------------------------------------------------------------------------------------


def test_stage_three_top1_routes_each_row_to_its_expert_and_balances_the_gate() -> None:
    objective = objective_of(kd_temperature=2.0, kl_weight=2.0, balance_weight=3.0)
    identity_gate(objective)
    objective.masks["teacher"] = FixedMask([1.0, 1.0])
    objective.masks["auxiliary"] = FixedMask([1.0, 1.0])
    student = [[2.0, 0.0], [0.0, 1.0]]  # row 0 -> teacher (gate logits [2, 0]); row 1 -> auxiliary ([0, 1])
    terms = objective.distill_terms(Experts(TEACHER_Z, AUX_Z), BATCH, student_forward(student), 10)  # type: ignore[arg-type]
    assert set(terms) == {"routed_kl", "balance"}
    routed = [TEACHER_Z[0], AUX_Z[1]]
    assert terms["routed_kl"].item() == pytest.approx(2.0 * hinton(routed, student, 2.0), abs=1e-6)
    mean = [(a + b) / 2 for a, b in zip(softmax(student[0]), softmax(student[1]), strict=True)]
    expected_balance = sum(0.5 * math.log(0.5 / m) for m in mean) / 2  # divided by the number of experts
    assert terms["balance"].item() == pytest.approx(3.0 * expected_balance, abs=1e-6)


def test_stage_three_soft_routing_distils_the_gate_weighted_mixture() -> None:
    objective = objective_of(routing="soft", kd_temperature=2.0)
    identity_gate(objective)
    objective.masks["teacher"] = FixedMask([1.0, 1.0])
    objective.masks["auxiliary"] = FixedMask([1.0, 1.0])
    student = [[math.log(3.0), 0.0], [0.0, 0.0]]  # gate: [3/4, 1/4] and [1/2, 1/2]
    fwd = student_forward(student)
    terms = objective.distill_terms(Experts(TEACHER_Z, AUX_Z), BATCH, fwd, 10)  # type: ignore[arg-type]
    weights = [[0.75, 0.25], [0.5, 0.5]]
    mixture = [
        [w[0] * t + w[1] * a for t, a in zip(TEACHER_Z[row], AUX_Z[row], strict=True)] for row, w in enumerate(weights)
    ]
    assert terms["routed_kl"].item() == pytest.approx(hinton(mixture, student, 2.0), abs=1e-6)
    terms["routed_kl"].backward()  # soft routing: the KL trains the gate
    assert objective.gate[1].weight.grad is not None and objective.gate[1].weight.grad.abs().sum() > 0
    # ... but not the student through the gate: its gradient is the one toward a fixed mixture.
    fixed = torch.tensor(student, requires_grad=True)
    hinton_kd("classification", fixed, torch.tensor(mixture), 2.0).backward()
    assert fwd.out["student"].grad is not None and fixed.grad is not None
    assert torch.allclose(fwd.out["student"].grad, fixed.grad, atol=1e-6)


def test_stage_three_top1_kl_does_not_train_the_gate_and_balance_reaches_the_student() -> None:
    objective = objective_of()
    objective.masks["teacher"] = FixedMask([1.0, 1.0])
    objective.masks["auxiliary"] = FixedMask([1.0, 1.0])
    experts = Experts(TEACHER_Z, AUX_Z)
    fwd = student_forward([[2.0, 0.0], [0.0, 1.0]])
    terms = objective.distill_terms(experts, BATCH, fwd, 10)  # type: ignore[arg-type]
    terms["routed_kl"].backward(retain_graph=True)
    assert objective.gate[1].weight.grad is None  # top-1: the choice is not differentiable
    assert all(p.grad is None for p in experts.parameters()) and objective.masks["teacher"].scale.grad is None
    fwd.out["student"].grad = None
    terms["balance"].backward()
    assert objective.gate[1].weight.grad is not None
    assert fwd.out["student"].grad is not None  # the gate reads the student's logits undetached, as the source


@pytest.mark.parametrize(
    ("epoch", "kl_factor", "balance_factor"),
    [(10, 1.0, 1.0), (11, 0.5, 0.9), (20, 0.5, 0.9), (21, 0.5, 0.81), (40, 0.5, 0.9**3), (41, 0.25, 0.9**4)],
)
def test_stage_three_weights_decay_on_the_sources_schedule(epoch: int, kl_factor: float, balance_factor: float) -> None:
    objective = OBJECTIVES.get("mst_distill")(
        spec_of({"cotrain_epochs": 8, "mask_epochs": 2}, epochs=40), repr_dim=2, n_train=2, output_dim=2
    )
    assert isinstance(objective, MSTDistillObjective)
    objective.masks["teacher"] = FixedMask([1.0, 1.0])
    objective.masks["auxiliary"] = FixedMask([1.0, 1.0])
    student = [[2.0, 0.0], [0.0, 1.0]]
    first = objective.distill_terms(Experts(TEACHER_Z, AUX_Z), BATCH, student_forward(student), 10)  # type: ignore[arg-type]
    later = objective.distill_terms(Experts(TEACHER_Z, AUX_Z), BATCH, student_forward(student), epoch)  # type: ignore[arg-type]
    assert later["routed_kl"].item() == pytest.approx(kl_factor * first["routed_kl"].item(), rel=1e-6)
    assert later["balance"].item() == pytest.approx(balance_factor * first["balance"].item(), rel=1e-6)


def test_balance_is_zero_for_an_even_gate_and_grows_with_imbalance() -> None:
    assert balance(torch.tensor([[0.9, 0.1], [0.1, 0.9]])).item() == pytest.approx(0.0, abs=1e-7)
    saturated = balance(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))  # one expert never chosen: large, finite
    assert math.isfinite(saturated.item()) and saturated.item() > 5.0
    assert balance(torch.tensor([[0.9, 0.1], [0.7, 0.3]])).item() > balance(torch.tensor([[0.6, 0.4]])).item() > 0


# --- MaskNet and the spec -----------------------------------------------------------------------------


def test_masknet_gives_a_mask_per_channel_in_zero_one_from_the_whole_vector() -> None:
    torch.manual_seed(0)
    net = MaskNet(12, heads=3)
    assert net.hidden == 6  # 12 // (2 * 3) * 3, as in the source
    features = torch.randn(5, 12)
    mask = net(features)
    assert mask.shape == (5, 12) and bool(((mask > 0) & (mask < 1)).all())
    changed = features.clone()
    changed[:, 0] += 3.0  # one channel moves: every channel's mask may change (attention over channels)
    assert not torch.allclose(net(changed)[:, 5:], mask[:, 5:])
    assert MaskNet(2, heads=3).hidden == 3  # never narrower than the heads
    # Attention runs over one sample's channels, never across the samples of a batch.
    assert torch.allclose(net(features[:1]), mask[:1], atol=1e-6)
    assert torch.allclose(net(features[2:4]), mask[2:4], atol=1e-6)


def test_spec_bounds_the_representation_and_refuses_retrieval() -> None:
    with pytest.raises(ValueError, match="model.repr_dim up to 512; it is 513"):
        spec_of({}, repr_dim=513)
    spec_of({}, repr_dim=512)  # batch 128 x 512^2 x 3 heads = 100,663,296 attention weights: allowed
    with pytest.raises(ValueError, match=r"batch_size x model.repr_dim\^2 x method.mask_heads is 402653184"):
        spec_of({"mask_heads": 12}, repr_dim=512)
    spec_of({"mask_heads": 8}, repr_dim=512)  # 2^28 exactly
    with pytest.raises(ValueError, match="needs logits"):
        JobSpec.model_validate(
            {
                "name": "r",
                "task": "retrieval",
                "dataset": {"uri": "file:///x.npz", "primary": ["a"], "auxiliary": ["b"], "retrieval_target": "c"},
                "method": {"name": "mst_distill"},
            }
        )


def test_networks_stay_untouched_by_the_masked_forward() -> None:
    """A real network: the masked forward leaves its parameters without gradients."""
    nets: Networks = build_networks(
        {"fou": (4,), "fac": (3,)}, primary=["fou"], auxiliary=["fac"], spec=ModelSpec(repr_dim=6), output_dim=3
    )
    objective = OBJECTIVES.get("mst_distill")(
        spec_of({"cotrain_epochs": 8, "mask_epochs": 2}, repr_dim=6), repr_dim=6, n_train=4, output_dim=3
    )
    assert isinstance(objective, MSTDistillObjective)
    batch = Batch({"fou": torch.randn(4, 4), "fac": torch.randn(4, 3)}, torch.tensor([0, 1, 2, -1]), torch.arange(4))
    fwd = Forward(z={}, out={"student": nets.student(batch.inputs)[1].detach()}, target={})
    terms = objective.distill_terms(nets, batch, fwd, 8)
    sum(terms.values()).backward()  # type: ignore[union-attr]
    assert all(p.grad is None for p in nets.parameters())
    assert all(p.grad is not None for p in objective.masks.parameters())
