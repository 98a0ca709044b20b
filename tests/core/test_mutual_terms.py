"""The co-trained logit methods, term by term: dml (deep mutual learning) and c2kd (proxies,
bidirectional KL and non-target distillation on agreeing samples), with their loss primitives.

Golden values are worked out by hand in the comments; the proxies are replaced by the identity
where a golden value needs it (the representations then serve as proxy logits).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from scipy.stats import kendalltau
from torch import nn

from core.errors import SpecError
from core.objectives import OBJECTIVES
from core.objectives.base import Batch, Forward
from core.objectives.c2kd import C2KDObjective
from core.objectives.losses import hinton_kd, kendall_tau, kl_to, non_target_kl
from core.spec import JobSpec, parse_spec_text


def spec_of(method: dict[str, Any], *, epochs: int = 2) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "terms",
            "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["fac"]},
            "method": method,
            "train": {"epochs": epochs},
        }
    )


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) of two distributions."""
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def softmax(logits: list[float]) -> list[float]:
    exp = [math.exp(v) for v in logits]
    return [v / sum(exp) for v in exp]


# --- primitives ---------------------------------------------------------------------------------


def test_kendall_tau_counts_concordant_minus_discordant_pairs() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 1.0, 3.0]])
    b = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [0.0, 5.0, 9.0]])
    # Row 2: pairs (0,1) +, (0,2) +, (1,2) - -> 1/3. Row 3: a tie in a counts 0 -> (0 + 1 + 1) / 3.
    assert kendall_tau(a, b).tolist() == pytest.approx([1.0, -1.0, 1 / 3, 2 / 3])


def test_kendall_tau_matches_scipy_without_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 7, generator=generator), torch.randn(20, 7, generator=generator)
    expected = [kendalltau(x.numpy(), y.numpy()).statistic for x, y in zip(a, b, strict=True)]
    assert kendall_tau(a, b).tolist() == pytest.approx(expected, abs=1e-6)


def test_kendall_tau_of_two_classes_is_their_one_pair() -> None:
    a = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert kendall_tau(a, torch.tensor([[2.0, 3.0], [3.0, 2.0]])).tolist() == [1.0, -1.0]


def test_kendall_tau_in_blocks_matches_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.objectives import losses

    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(11, 5, generator=generator), torch.randn(11, 5, generator=generator)
    whole = kendall_tau(a, b)
    monkeypatch.setattr(losses, "KENDALL_BLOCK", 3 * 25)  # three rows a block: 4 blocks, the last of 2 rows
    assert kendall_tau(a, b).tolist() == pytest.approx(whole.tolist(), abs=1e-7)
    assert kendall_tau(a[:0], b[:0]).shape == (0,)


def test_c2kd_refuses_more_classes_than_it_can_rank() -> None:
    from core.objectives.c2kd import MAX_CLASSES

    spec = spec_of({"name": "c2kd"})
    OBJECTIVES.get("c2kd")(spec, repr_dim=4, n_train=2, output_dim=MAX_CLASSES)
    with pytest.raises(SpecError, match=f"at most {MAX_CLASSES} classes; this dataset has {MAX_CLASSES + 1}"):
        OBJECTIVES.get("c2kd")(spec, repr_dim=4, n_train=2, output_dim=MAX_CLASSES + 1)


def test_kl_to_is_per_sample_kl_toward_a_detached_target() -> None:
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]], requires_grad=True)
    target = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]], requires_grad=True)
    value = kl_to(logits, target)
    assert value.tolist() == pytest.approx([kl([0.75, 0.25], [0.5, 0.5]), 0.0], abs=1e-6)
    value.sum().backward()
    assert target.grad is None and logits.grad is not None


def test_non_target_kl_multiplies_the_class_logit_by_zero_on_both_sides() -> None:
    logits = torch.tensor([[5.0, 0.0, 0.0]])
    target = torch.tensor([[-3.0, math.log(3.0), 0.0]])
    # class 0 zeroed: logits -> [0, 0, 0] (uniform), target -> [0, ln 3, 0] -> [1/5, 3/5, 1/5].
    expected = kl([0.2, 0.6, 0.2], [1 / 3, 1 / 3, 1 / 3])
    assert non_target_kl(logits, target, torch.tensor([0])).item() == pytest.approx(expected, abs=1e-6)
    # The class's own logits do not matter; another class's do.
    moved = non_target_kl(
        torch.tensor([[-7.0, 0.0, 0.0]]), torch.tensor([[9.0, math.log(3.0), 0.0]]), torch.tensor([0])
    )
    assert moved.item() == pytest.approx(expected, abs=1e-6)
    assert non_target_kl(logits, target, torch.tensor([2])).item() != pytest.approx(expected, abs=1e-3)


# --- dml ------------------------------------------------------------------------------------------

OUT = {
    "student": torch.tensor([[0.0, 0.0], [1.0, -1.0]]),
    "teacher": torch.tensor([[math.log(3.0), 0.0], [0.0, 2.0]]),
    "auxiliary": torch.tensor([[2.0, 1.0], [-1.0, 0.5]]),
}


def fresh_forward() -> Forward:
    out = {name: value.clone().requires_grad_(True) for name, value in OUT.items()}
    z = {name: value.clone().requires_grad_(True) for name, value in OUT.items()}
    return Forward(z=z, out=out, target={})


def test_dml_each_network_learns_from_the_mean_of_the_other_two() -> None:
    objective = OBJECTIVES.get("dml")(
        spec_of({"name": "dml", "kd_weight": 0.5, "kd_temperature": 2.0}), repr_dim=2, n_train=2
    )
    fwd = fresh_forward()
    batch = Batch({}, torch.tensor([0, -1]), torch.arange(2))  # the unlabelled row counts in every KL
    terms = objective.losses(None, batch, fwd, 0)  # type: ignore[arg-type]
    assert set(terms) == {
        "task_student",
        "task_teacher",
        "task_auxiliary",
        "mutual_student",
        "mutual_teacher",
        "mutual_auxiliary",
    }

    def by_hand(name: str) -> float:
        total = 0.0
        for other in OUT:
            if other == name:
                continue
            for row in range(2):
                p = softmax([v / 2.0 for v in OUT[other][row].tolist()])
                q = softmax([v / 2.0 for v in OUT[name][row].tolist()])
                total += 4.0 * kl(p, q) / 2  # T^2 KL, batch mean over 2 rows
        return 0.5 * total / 2  # kd_weight, mean over the 2 other networks

    for name in OUT:
        assert terms[f"mutual_{name}"].item() == pytest.approx(by_hand(name), abs=1e-6), name
        assert terms[f"mutual_{name}"].item() == pytest.approx(
            0.5 * sum(hinton_kd("classification", fwd.out[name], fwd.out[o], 2.0).item() for o in OUT if o != name) / 2,
            abs=1e-6,
        )


def test_dml_term_of_a_network_trains_that_network_only() -> None:
    objective = OBJECTIVES.get("dml")(spec_of({"name": "dml"}), repr_dim=2, n_train=2)
    fwd = fresh_forward()
    terms = objective.distill_terms(None, Batch({}, torch.tensor([0, 1]), torch.arange(2)), fwd, 0)  # type: ignore[arg-type]
    terms["mutual_student"].backward()
    assert fwd.out["student"].grad is not None
    assert fwd.out["teacher"].grad is None and fwd.out["auxiliary"].grad is None


def test_dml_trains_all_three_networks_in_every_epoch() -> None:
    objective = OBJECTIVES.get("dml")(spec_of({"name": "dml"}, epochs=3), repr_dim=2, n_train=2)
    assert objective.total_epochs == 3 and objective.window("student") == (0, 3)
    assert objective.roles(0) == {"student": "train", "teacher": "train", "auxiliary": "train"}
    assert objective.distilling(0)


# --- c2kd -----------------------------------------------------------------------------------------


def c2kd(**method: Any) -> C2KDObjective:
    spec = spec_of({"name": "c2kd", "teacher_epochs": 1, **method})
    objective = OBJECTIVES.get("c2kd")(spec, repr_dim=2, n_train=2, output_dim=2)
    assert isinstance(objective, C2KDObjective)
    objective.proxy_teacher, objective.proxy_student = nn.Identity(), nn.Identity()
    return objective


def test_c2kd_phases_the_teacher_keeps_training_beside_the_student() -> None:
    objective = c2kd()
    assert objective.total_epochs == 3
    assert objective.window("teacher") == (0, 3) and objective.window("auxiliary") == (0, 1)
    assert objective.window("student") == objective.window("method") == (1, 2)
    assert objective.roles(0) == {"student": "idle", "teacher": "train", "auxiliary": "train"}
    assert objective.roles(1) == {"student": "train", "teacher": "train", "auxiliary": "idle"}
    assert objective.distill_terms(None, Batch({}, torch.tensor([0, 1]), torch.arange(2)), fresh_forward(), 0) == {}  # type: ignore[arg-type]


def test_c2kd_proxies_are_sized_by_the_classes() -> None:
    spec = spec_of({"name": "c2kd"})
    objective = OBJECTIVES.get("c2kd")(spec, repr_dim=6, n_train=2, output_dim=10)
    assert isinstance(objective, C2KDObjective)
    assert objective.proxy_teacher(torch.randn(4, 6)).shape == (4, 10)
    assert isinstance(objective.proxy_student[1], nn.BatchNorm1d)
    with pytest.raises(AssertionError, match="number of classes"):
        OBJECTIVES.get("c2kd")(spec, repr_dim=6, n_train=2)


def c2kd_forward() -> Forward:
    """Logits z and proxy logits p (the representations, the proxies being the identity), 3 classes.
    Row 0: proxies rank the classes alike (tau = 1); row 1: reversed (tau = -1)."""
    out = {
        "student": torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]]),
        "teacher": torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]]),
    }
    z = {
        "student": torch.tensor([[0.0, 1.0, 3.0], [2.0, 1.0, 0.0]]),
        "teacher": torch.tensor([[0.5, 1.0, 2.0], [0.0, 1.0, 2.0]]),
    }
    return Forward(
        z={k: v.clone().requires_grad_(True) for k, v in z.items()},
        out={k: v.clone().requires_grad_(True) for k, v in out.items()},
        target={},
    )


def test_c2kd_terms_golden_values() -> None:
    objective = c2kd(proxy_weight=0.5, nt_weight=2.0)
    fwd = c2kd_forward()
    # Row 1 is unlabelled: its class is the teacher's prediction, argmax [0, 2, 1] = 1.
    terms = objective.distill_terms(None, Batch({}, torch.tensor([2, -1]), torch.arange(2)), fwd, 1)  # type: ignore[arg-type]
    z_t, z_s = fwd.out["teacher"].tolist(), fwd.out["student"].tolist()
    p_t, p_s = fwd.z["teacher"].tolist(), fwd.z["student"].tolist()

    def both_ways(a: list[list[float]], b: list[list[float]]) -> float:
        return sum(kl(softmax(b[i]), softmax(a[i])) + kl(softmax(a[i]), softmax(b[i])) for i in range(2)) / 2

    assert terms["proxy_teacher"].item() == pytest.approx(0.5 * both_ways(p_t, z_t), abs=1e-6)
    assert terms["proxy_student"].item() == pytest.approx(0.5 * both_ways(p_s, z_s), abs=1e-6)
    # NT: only row 0 agrees (tau 1 > 0); its class 2 zeroed; the mean divides by the batch (2).
    row_t, row_s = [0.5, 1.0, 0.0], [0.0, 1.0, 0.0]
    assert terms["nt_teacher"].item() == pytest.approx(2.0 * kl(softmax(row_s), softmax(row_t)) / 2, abs=1e-6)
    assert terms["nt_student"].item() == pytest.approx(2.0 * kl(softmax(row_t), softmax(row_s)) / 2, abs=1e-6)


def test_c2kd_threshold_minus_one_distils_every_row_and_unlabelled_rows_use_the_teachers_class() -> None:
    batch = Batch({}, torch.tensor([2, -1]), torch.arange(2))
    fwd = c2kd_forward()
    agreeing = c2kd(nt_weight=1.0).distill_terms(None, batch, fwd, 1)  # type: ignore[arg-type]
    every = c2kd(nt_weight=1.0, tau_threshold=-1.0).distill_terms(None, batch, c2kd_forward(), 1)  # type: ignore[arg-type]
    p_t, p_s = fwd.z["teacher"].tolist()[1], fwd.z["student"].tolist()[1]
    masked_t, masked_s = [p_t[0], 0.0, p_t[2]], [p_s[0], 0.0, p_s[2]]  # class 1: the teacher's argmax
    assert every["nt_student"].item() - agreeing["nt_student"].item() == pytest.approx(
        kl(softmax(masked_t), softmax(masked_s)) / 2, abs=1e-6
    )


def test_c2kd_gradients_each_side_learns_from_the_other_detached() -> None:
    objective = c2kd()
    fwd = c2kd_forward()
    terms = objective.distill_terms(None, Batch({}, torch.tensor([2, 0]), torch.arange(2)), fwd, 1)  # type: ignore[arg-type]
    (terms["nt_student"] + terms["proxy_student"]).backward()
    assert fwd.z["student"].grad is not None and fwd.out["student"].grad is not None
    assert fwd.z["teacher"].grad is None and fwd.out["teacher"].grad is None


@pytest.mark.parametrize(
    ("task", "method", "message"),
    [
        ("multilabel", "c2kd", "needs classification"),
        ("regression", "c2kd", "needs classification"),
        ("retrieval", "c2kd", "needs logits"),
        ("retrieval", "dml", "needs logits"),
    ],
)
def test_logit_methods_refuse_tasks_without_what_they_distil(task: str, method: str, message: str) -> None:
    dataset = {"uri": "x.npz", "primary": ["a"], "auxiliary": ["b"]}
    if task == "retrieval":
        dataset["retrieval_target"] = "c"
    with pytest.raises(SpecError, match=message):
        parse_spec_text(json.dumps({"name": "t", "task": task, "dataset": dataset, "method": {"name": method}}), "spec")


def test_c2kd_proxy_is_linear_batchnorm_leaky_relu_linear() -> None:
    objective = OBJECTIVES.get("c2kd")(spec_of({"name": "c2kd"}), repr_dim=6, n_train=2, output_dim=10)
    assert isinstance(objective, C2KDObjective)
    layers = list(objective.proxy_teacher)  # type: ignore[arg-type]
    assert [type(layer) for layer in layers] == [nn.Linear, nn.BatchNorm1d, nn.LeakyReLU, nn.Linear]
    assert layers[2].negative_slope == pytest.approx(0.1)
    assert (layers[0].in_features, layers[0].out_features, layers[3].out_features) == (6, 6, 10)


def test_c2kd_a_sample_labelled_zero_keeps_its_label_and_a_tau_at_the_threshold_does_not_count() -> None:
    # Row 0 labelled 0 (the teacher predicts class 2): its class 0 is zeroed, not the teacher's 2.
    out = {
        "student": torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]]),
        "teacher": torch.tensor([[0.0, 1.0, 3.0], [0.0, 2.0, 1.0]]),
    }
    z = {
        "student": torch.tensor([[0.0, 1.0, 3.0], [2.0, 1.0, 2.0]]),
        "teacher": torch.tensor([[0.5, 1.0, 2.0], [1.0, 2.0, 3.0]]),
    }
    # Row 1's proxies: pairs (0,1) discordant, (0,2) a tie in the student's, (1,2) concordant: tau = 0.
    assert kendall_tau(z["teacher"], z["student"]).tolist() == pytest.approx([1.0, 0.0])
    fwd = Forward(z=z, out=out, target={})
    terms = c2kd(nt_weight=1.0).distill_terms(None, Batch({}, torch.tensor([0, 1]), torch.arange(2)), fwd, 1)  # type: ignore[arg-type]
    row_t, row_s = [0.0, 1.0, 2.0], [0.0, 1.0, 3.0]  # class 0 zeroed (it was 0.5 and 0.0)
    assert terms["nt_student"].item() == pytest.approx(kl(softmax(row_t), softmax(row_s)) / 2, abs=1e-6)
