"""Golden values for the loss branches tests/core/test_losses.py leaves out, the projection heads'
shapes, and every loss kept on its inputs' device.

The device checks run on PyTorch's ``meta`` device, which computes shapes only: a tensor created on
the default (CPU) device inside a loss then fails loudly, as it would on CUDA, without a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.objectives.crd import CRDObjective, bank_nce
from core.objectives.losses import hinton_kd, info_nce, projection_head, task_loss
from core.objectives.paper import PaperObjective
from core.spec import JobSpec

META = torch.device("meta")


def softplus(x: float) -> float:
    """log(1 + e^x)."""
    return math.log1p(math.exp(x))


def test_hinton_kd_multilabel_golden_value() -> None:
    # T = 2: the teacher's softened probability is sigmoid(ln 3) = 0.75, the student's sigmoid(-ln 3) = 0.25.
    student = torch.tensor([[-2 * math.log(3.0)]])
    teacher = torch.tensor([[2 * math.log(3.0)]])
    expected = 4 * -(0.75 * math.log(0.25) + 0.25 * math.log(0.75))
    assert hinton_kd("multilabel", student, teacher, 2.0).item() == pytest.approx(expected, abs=1e-6)


def test_hinton_kd_regression_is_plain_mse_without_temperature_and_never_moves_the_teacher() -> None:
    student = torch.tensor([[1.0], [3.0]], requires_grad=True)
    teacher = torch.zeros(2, 1, requires_grad=True)
    value = hinton_kd("regression", student, teacher, 2.0)
    assert value.item() == pytest.approx((1.0 + 9.0) / 2)
    value.backward()
    assert teacher.grad is None


def test_task_loss_multilabel_skips_rows_with_any_missing_label() -> None:
    output = torch.tensor([[2.0, -1.0], [0.0, 0.0], [1.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [float("nan"), 1.0], [0.0, 1.0]])
    expected = (softplus(-2.0) + softplus(-1.0) + softplus(1.0) + softplus(-1.0)) / 4
    assert task_loss("multilabel", output, targets).item() == pytest.approx(expected, abs=1e-6)


def test_task_loss_regression_averages_l1_over_labelled_rows_and_targets() -> None:
    output = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, -4.0]])
    targets = torch.tensor([[0.0, 0.0], [float("nan"), 1.0], [1.0, 0.0]])
    assert task_loss("regression", output, targets).item() == pytest.approx((1 + 2 + 1 + 4) / 4)
    assert task_loss("regression", output, torch.full((3, 2), float("nan"))).item() == 0.0
    one_target = task_loss("regression", torch.tensor([[3.0], [1.0]]), torch.tensor([1.0, float("nan")]))
    assert one_target.item() == pytest.approx(2.0)  # one labelled row, one target: divided by 1


def test_task_loss_classification_divides_by_the_labelled_count() -> None:
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]])
    labels = torch.tensor([0, 1, 1, -1])
    expected = (2 * -math.log(0.75) + math.log(2.0)) / 3
    assert task_loss("classification", logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_projection_heads_are_linear_or_a_two_layer_mlp_with_a_full_width_hidden_layer() -> None:
    linear = projection_head(5, 3, 1)
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (5, 3)
    mlp = projection_head(5, 3, 2)
    assert isinstance(mlp, nn.Sequential) and len(mlp) == 3
    first, activation, last = mlp
    assert isinstance(first, nn.Linear) and (first.in_features, first.out_features) == (5, 5)
    assert isinstance(activation, nn.ReLU)
    assert isinstance(last, nn.Linear) and (last.in_features, last.out_features) == (5, 3)


def test_contrastive_losses_stay_on_their_inputs_device() -> None:
    a, b = torch.empty(4, 3, device=META), torch.empty(4, 3, device=META)
    assert info_nce(a, b, 0.1).device == META
    assert bank_nce(a, b, torch.empty(4, 5, 3, device=META), 0.1).device == META


def spec_of(method: dict[str, object]) -> JobSpec:
    """A validated spec for ``method`` (no data is loaded)."""
    return JobSpec.model_validate(
        {"name": "device", "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["fac"]}, "method": method}
    )


def test_generator_noise_is_drawn_on_the_representations_device_and_dtype() -> None:
    objective = PaperObjective(spec_of({"name": "paper", "noise_dim": 3}), repr_dim=4, n_train=8)
    first = objective.generator[0]
    assert isinstance(first, nn.Linear) and first.in_features == 4 + 3
    fake = objective.to(META).generate(torch.empty(2, 4, device=META))
    assert fake.device == META and fake.shape == (2, 4)
    double = PaperObjective(spec_of({"name": "paper", "noise_dim": 3}), repr_dim=4, n_train=8).double()
    assert double.generate(torch.zeros(2, 4, dtype=torch.float64)).dtype == torch.float64


def test_crd_negatives_are_drawn_on_the_rows_device() -> None:
    objective = CRDObjective(spec_of({"name": "crd", "n_neg": 6}), repr_dim=4, n_train=8)
    negatives = objective._sample_negatives(torch.arange(3, device=META))
    assert negatives.device == META and negatives.shape == (3, 6)
