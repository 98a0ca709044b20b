"""Golden values for every loss on small hand-checked tensors, and the standard losses against an
independent numpy implementation of their textbook formulas.

(torchdistill would be the obvious independent implementation, but its release needs torchvision
>= 0.27, which does not install beside the pinned CPU torch here; the numpy references below are
written from the papers' formulas instead.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.objectives.crd import bank_nce
from core.objectives.losses import hinton_kd, info_nce, task_loss
from core.objectives.paper import PaperObjective
from core.spec import JobSpec


def np_log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def np_info_nce(a: np.ndarray, b: np.ndarray, tau: float) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = a @ b.T / tau
    rows = -np.diag(np_log_softmax(s, axis=1)).mean()
    cols = -np.diag(np_log_softmax(s, axis=0)).mean()
    return float((rows + cols) / 2)


def np_kd(student: np.ndarray, teacher: np.ndarray, t: float) -> float:
    p = np.exp(np_log_softmax(teacher / t, axis=1))
    log_q = np_log_softmax(student / t, axis=1)
    return float(t * t * (p * (np.log(p) - log_q)).sum(axis=1).mean())


def test_info_nce_golden_value() -> None:
    # Orthonormal pairs, tau = 1: each row's softmax puts e^1 / (e^1 + e^0) on the positive.
    eye = torch.eye(2)
    assert info_nce(eye, eye, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # Scaling rows does not matter (L2-normalised); tau sharpens.
    assert info_nce(3 * eye, eye, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_info_nce_matches_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(16, 8)), rng.normal(size=(16, 8))
    ours = info_nce(torch.tensor(a), torch.tensor(b), 0.07).item()
    assert ours == pytest.approx(np_info_nce(a, b, 0.07), rel=1e-9)


def test_hinton_kd_golden_values() -> None:
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax = (0.75, 0.25)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert hinton_kd("classification", student, teacher, 1.0).item() == pytest.approx(kl, abs=1e-6)
    p = math.sqrt(3) / (math.sqrt(3) + 1)  # softmax of (ln 3 / 2, 0)
    kl_t2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert hinton_kd("classification", student, teacher, 2.0).item() == pytest.approx(kl_t2, abs=1e-6)


def test_hinton_kd_matches_numpy_reference_and_is_zero_at_agreement() -> None:
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(10, 5)), rng.normal(size=(10, 5))
    assert hinton_kd("classification", torch.tensor(s), torch.tensor(t), 4.0).item() == pytest.approx(
        np_kd(s, t, 4.0), rel=1e-9
    )
    assert hinton_kd("classification", torch.tensor(t), torch.tensor(t), 4.0).item() == pytest.approx(0, abs=1e-12)


def test_hinton_kd_never_moves_the_teacher() -> None:
    teacher = torch.randn(4, 3, requires_grad=True)
    hinton_kd("classification", torch.randn(4, 3, requires_grad=True), teacher, 2.0).backward()
    assert teacher.grad is None


def test_task_loss_ignores_unlabelled_samples() -> None:
    logits = torch.tensor([[math.log(3.0), 0.0], [5.0, -5.0]])
    labels = torch.tensor([0, -1])
    assert task_loss("classification", logits, labels).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert task_loss("classification", logits, torch.tensor([-1, -1])).item() == 0.0
    predictions = torch.tensor([[1.0], [2.0], [4.0]])
    targets = torch.tensor([0.5, float("nan"), 1.0])
    assert task_loss("regression", predictions, targets).item() == pytest.approx((0.5 + 3.0) / 2)
    bce = task_loss("multilabel", torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item()
    assert bce == pytest.approx(math.log(2), abs=1e-6)


def test_bank_nce_golden_value() -> None:
    # Anchor == positive (score 1); two negatives orthogonal (score 0); tau = 1.
    anchor = torch.tensor([[1.0, 0.0]])
    negatives = torch.tensor([[[0.0, 1.0], [0.0, -1.0]]])
    expected = -math.log(math.e / (math.e + 2))
    assert bank_nce(anchor, anchor, negatives, 1.0).item() == pytest.approx(expected, abs=1e-6)


def paper_objective() -> PaperObjective:
    spec = JobSpec.model_validate(
        {
            "name": "t",
            "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["fac"]},
            "method": {"name": "paper", "noise_dim": 0, "gamma": 1.0, "recon_weight": 1.0},
        }
    )
    return PaperObjective(spec, repr_dim=2, n_train=10)


def test_adversarial_discriminator_loss_golden_value() -> None:
    objective = paper_objective()
    for parameter in objective.discriminator.parameters():
        torch.nn.init.zeros_(parameter)  # D outputs logit 0: both BCE terms equal log 2
    from core.objectives.base import Forward

    fwd = Forward(z={"student": torch.ones(3, 2), "teacher": torch.ones(3, 2)}, out={}, target={})
    fwd.extras["fake"] = torch.zeros(3, 2)
    assert objective.discriminator_step(fwd)["disc"].item() == pytest.approx(2 * math.log(2), abs=1e-6)


def test_adversarial_generator_term_golden_value_and_detached_teacher() -> None:
    objective = paper_objective()
    for module in (objective.generator, objective.discriminator):
        for parameter in module.parameters():
            torch.nn.init.zeros_(parameter)  # G(z) = 0, D = 0
    z_s = torch.ones(3, 2, requires_grad=True)
    z_t = torch.full((3, 2), 2.0, requires_grad=True)
    fake = objective.generate(z_s)
    fool = torch.nn.functional.binary_cross_entropy_with_logits(objective.critic(z_s, fake), torch.ones(3))
    recon = torch.nn.functional.mse_loss(fake, z_t.detach())
    assert fool.item() == pytest.approx(math.log(2), abs=1e-6)
    assert recon.item() == pytest.approx(4.0)  # (0 - 2)^2
    from core.objectives.base import Batch, Forward

    fwd = Forward(z={"student": z_s, "teacher": z_t, "auxiliary": torch.randn(3, 2)}, out={}, target={})
    terms = objective.distill_terms(None, Batch({}, None, torch.arange(3)), fwd, epoch=0)  # type: ignore[arg-type]
    terms["adv"].backward()
    assert terms["adv"].item() == pytest.approx(math.log(2) + 4.0, abs=1e-5)
    assert z_t.grad is None  # L_adv never pulls the teacher toward the student


def test_unlabelled_targets_leave_gradients_finite() -> None:
    output = torch.zeros(3, 2, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [float("nan"), float("nan")], [0.0, 1.0]])
    for task in ("regression", "multilabel"):
        output.grad = None
        task_loss(task, output, targets).backward()  # type: ignore[arg-type]
        assert output.grad is not None and torch.isfinite(output.grad).all()
        assert torch.equal(output.grad[1], torch.zeros(2))  # the unlabelled row gets no gradient
