"""Golden values of the paper's adversarial term, L_adv(T|S), with a non-zero discriminator.

G and D are set by hand so that every number below can be checked on paper (LeakyReLU slope 0.2):

    G(z) = leaky(z) + (0.5, -0.5)
    D(z_S, t) = 0.25 + 0.5 * leaky(z_S[0]) + leaky(t[0]) + leaky(t[1])

Real pairs, fake pairs and the two labels all give different logits, so swapping the labels (real
scored as fake, or G rewarded for being caught) changes every value here. With a zeroed D every
logit is 0 and BCE is log 2 whatever the label: the tests of tests/core/test_losses.py cannot see
a swap, these can.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.objectives.base import Batch, Forward
from core.objectives.paper import PaperObjective
from core.spec import JobSpec

Z_S = [[1.0, 0.0], [-2.0, 1.0]]
Z_T = [[1.0, 0.5], [2.0, -1.0]]
GAMMA, RECON_WEIGHT = 0.5, 2.0


def softplus(x: float) -> float:
    """log(1 + e^x): BCE-with-logits is softplus(-logit) for label 1 and softplus(logit) for label 0."""
    return math.log1p(math.exp(x))


def linear(mlp: nn.Sequential, index: int) -> nn.Linear:
    """One Linear layer of G's or D's MLP."""
    layer = mlp[index]
    assert isinstance(layer, nn.Linear)
    return layer


def hand_set_objective(warmup_epochs: int = 0, ramp_epochs: int = 0) -> PaperObjective:
    """A paper objective on 2-dim representations, no noise, with G and D as in the module docstring."""
    spec = JobSpec.model_validate(
        {
            "name": "golden",
            "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["fac"]},
            "method": {
                "name": "paper",
                "noise_dim": 0,
                "gamma": GAMMA,
                "recon_weight": RECON_WEIGHT,
                "warmup_epochs": warmup_epochs,
                "ramp_epochs": ramp_epochs,
            },
        }
    )
    objective = PaperObjective(spec, repr_dim=2, n_train=10)
    g_in, g_out, d_in, d_out = (
        linear(objective.generator, 0),
        linear(objective.generator, 2),
        linear(objective.discriminator, 0),
        linear(objective.discriminator, 2),
    )
    with torch.no_grad():
        g_in.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
        g_in.bias.zero_()
        g_out.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
        g_out.bias.copy_(torch.tensor([0.5, -0.5]))
        d_in.weight.copy_(torch.eye(4))
        d_in.bias.zero_()
        d_out.weight.copy_(torch.tensor([[0.5, 0.0, 1.0, 1.0]]))
        d_out.bias.fill_(0.25)
    return objective


def forward_of(z_s: torch.Tensor, z_t: torch.Tensor) -> Forward:
    """A Forward with the given student and teacher representations (and a random auxiliary one)."""
    return Forward(z={"student": z_s, "teacher": z_t, "auxiliary": torch.randn(2, 2)}, out={}, target={})


def no_batch() -> Batch:
    """The batch argument: the adversarial term reads only the representations."""
    return Batch({}, None, torch.arange(2))


def test_generator_and_critic_compute_the_hand_set_functions() -> None:
    objective = hand_set_objective()
    fake = objective.generate(torch.tensor(Z_S))
    torch.testing.assert_close(fake, torch.tensor([[1.5, -0.5], [0.1, 0.5]]))
    logits = objective.critic(torch.tensor(Z_S), torch.tensor(Z_T))
    assert logits.tolist() == pytest.approx([2.25, 1.85], abs=1e-6)


def test_discriminator_loss_golden_value_scores_real_pairs_as_one_and_fakes_as_zero() -> None:
    objective = hand_set_objective()
    fwd = forward_of(torch.tensor(Z_S), torch.tensor(Z_T))
    fwd.extras["fake"] = torch.tensor([[-1.0, 0.0], [0.5, 0.5]])
    # Real logits 2.25 and 1.85 (label 1); fake logits 0.55 and 1.05 (label 0).
    expected = (softplus(-2.25) + softplus(-1.85)) / 2 + (softplus(0.55) + softplus(1.05)) / 2
    assert objective.discriminator_step(fwd)["disc"].item() == pytest.approx(expected, abs=1e-6)


def test_discriminator_step_sees_detached_pairs_only() -> None:
    objective = hand_set_objective()
    z_s = torch.tensor(Z_S, requires_grad=True)
    z_t = torch.tensor(Z_T, requires_grad=True)
    fwd = forward_of(z_s, z_t)
    fwd.extras["fake"] = torch.tensor([[-1.0, 0.0], [0.5, 0.5]])
    objective.discriminator_step(fwd)["disc"].backward()
    assert z_s.grad is None and z_t.grad is None
    assert all(p.grad is not None for p in objective.discriminator.parameters())


def test_generator_term_golden_value_rewards_fooling_the_critic() -> None:
    objective = hand_set_objective()
    terms = objective.distill_terms(None, no_batch(), forward_of(torch.tensor(Z_S), torch.tensor(Z_T)), epoch=0)  # type: ignore[arg-type]
    # G(z_S) = (1.5, -0.5), (0.1, 0.5): critic logits 2.15 and 0.65, both labelled real for G.
    fool = (softplus(-2.15) + softplus(-0.65)) / 2
    recon = ((1.5 - 1.0) ** 2 + (-0.5 - 0.5) ** 2 + (0.1 - 2.0) ** 2 + (0.5 + 1.0) ** 2) / 4
    assert terms["adv"].item() == pytest.approx(GAMMA * (fool + RECON_WEIGHT * recon), abs=1e-6)


def test_generator_term_hands_its_fakes_to_the_discriminator_step() -> None:
    objective = hand_set_objective()
    fwd = forward_of(torch.tensor(Z_S), torch.tensor(Z_T))
    objective.distill_terms(None, no_batch(), fwd, epoch=0)  # type: ignore[arg-type]
    torch.testing.assert_close(fwd.extras["fake"], torch.tensor([[1.5, -0.5], [0.1, 0.5]]))
    assert not fwd.extras["fake"].requires_grad
    expected = (softplus(-2.25) + softplus(-1.85)) / 2 + (softplus(2.15) + softplus(0.65)) / 2
    assert objective.discriminator_step(fwd)["disc"].item() == pytest.approx(expected, abs=1e-6)


def test_adversarial_term_moves_the_student_and_never_the_teacher() -> None:
    objective = hand_set_objective()
    z_s = torch.tensor(Z_S, requires_grad=True)
    z_t = torch.tensor(Z_T, requires_grad=True)
    terms = objective.distill_terms(None, no_batch(), forward_of(z_s, z_t), epoch=0)  # type: ignore[arg-type]
    terms["adv"].backward()
    assert z_t.grad is None
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0


def test_adversarial_term_follows_the_warm_up_and_ramp() -> None:
    objective = hand_set_objective(warmup_epochs=1, ramp_epochs=2)
    full = hand_set_objective().distill_terms(None, no_batch(), forward_of(torch.tensor(Z_S), torch.tensor(Z_T)), 0)  # type: ignore[arg-type]

    def adv(epoch: int) -> float:
        fwd = forward_of(torch.tensor(Z_S), torch.tensor(Z_T))
        return objective.distill_terms(None, no_batch(), fwd, epoch)["adv"].item()  # type: ignore[arg-type]

    # Warm-up: no term at all (a zero-weighted one would hand G zero gradients), and nothing for D.
    warm = forward_of(torch.tensor(Z_S), torch.tensor(Z_T))
    assert objective.distill_terms(None, no_batch(), warm, 0) == {}  # type: ignore[arg-type]
    assert objective.discriminator_step(warm) == {}
    assert adv(1) == pytest.approx(full["adv"].item() / 2, abs=1e-6)
    assert adv(2) == pytest.approx(full["adv"].item(), abs=1e-6)


def test_one_discriminator_step_widens_the_margin_between_real_and_fake_pairs() -> None:
    objective = hand_set_objective()
    z_s, z_t, fake = torch.tensor(Z_S), torch.tensor(Z_T), torch.tensor([[-1.0, 0.0], [0.5, 0.5]])
    fwd = forward_of(z_s, z_t)
    fwd.extras["fake"] = fake

    def margin() -> float:
        return (objective.critic(z_s, z_t).mean() - objective.critic(z_s, fake).mean()).item()

    before = margin()
    optimizer = torch.optim.SGD(objective.discriminator.parameters(), lr=0.01)
    objective.discriminator_step(fwd)["disc"].backward()
    optimizer.step()
    assert margin() > before


def test_one_generator_step_raises_the_critic_score_of_its_fakes() -> None:
    objective = hand_set_objective()
    objective.method = objective.method.model_copy(update={"recon_weight": 0.0})  # the fooling part alone
    z_s, z_t = torch.tensor(Z_S), torch.tensor(Z_T)
    before = objective.critic(z_s, objective.generate(z_s)).detach()
    optimizer = torch.optim.SGD(objective.generator.parameters(), lr=0.1)
    objective.distill_terms(None, no_batch(), forward_of(z_s, z_t), epoch=0)["adv"].backward()  # type: ignore[arg-type]
    optimizer.step()
    assert (objective.critic(z_s, objective.generate(z_s)) > before).all()


def test_fool_weight_scales_the_fooling_part_and_at_zero_leaves_reconstruction_alone_and_d_at_rest() -> None:
    objective = hand_set_objective()
    fool = (softplus(-2.15) + softplus(-0.65)) / 2
    recon = ((1.5 - 1.0) ** 2 + (-0.5 - 0.5) ** 2 + (0.1 - 2.0) ** 2 + (0.5 + 1.0) ** 2) / 4
    objective.method = objective.method.model_copy(update={"fool_weight": 0.25})
    fwd = forward_of(torch.tensor(Z_S), torch.tensor(Z_T))
    terms = objective.distill_terms(None, no_batch(), fwd, epoch=0)  # type: ignore[arg-type]
    assert terms["adv"].item() == pytest.approx(GAMMA * (0.25 * fool + RECON_WEIGHT * recon), abs=1e-6)
    assert "disc" in objective.discriminator_step(fwd)
    objective.method = objective.method.model_copy(update={"fool_weight": 0.0})
    fwd = forward_of(torch.tensor(Z_S), torch.tensor(Z_T))
    terms = objective.distill_terms(None, no_batch(), fwd, epoch=0)  # type: ignore[arg-type]
    assert terms["adv"].item() == pytest.approx(GAMMA * RECON_WEIGHT * recon, abs=1e-6)
    assert objective.discriminator_step(fwd) == {}  # no adversary to train
