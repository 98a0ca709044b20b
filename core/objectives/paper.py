"""paper: the full objective of Chen, Xing, Wang, Zhang (CVPR 2023, arXiv 2306.07646).

    L = sum of task losses + alpha L_mi(T,S) + beta L_mi(T,A) + gamma L_adv(T|S)

L_adv estimates the conditional entropy H(T|S) adversarially (our reading; the paper's abstract
does not fix the form): a generator G(z_S, noise) predicts z_T, a discriminator D(z_S, t) tells
real pairs (z_S, z_T) from fake pairs (z_S, G(z_S)). If the student's representation explains the
teacher's, G can fool D and reconstruct z_T. z_T is detached inside L_adv, so this term never
pulls the teacher toward the student; D trains in its own, alternating optimiser step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core import parallel
from core.models.network import Networks
from core.objectives.base import OBJECTIVES, Batch, Forward
from core.objectives.mi_joint_aux import MIJointAuxObjective
from core.spec import JobSpec, Paper


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, out_dim))


@OBJECTIVES.register("paper")
class PaperObjective(MIJointAuxObjective):
    """mi_joint_aux plus gamma * (fool_weight * non-saturating generator loss + recon_weight * ||G(z_S) - z_T||^2)."""

    method: Paper

    def __init__(self, spec: JobSpec, *, repr_dim: int, n_train: int, output_dim: int | None = None) -> None:
        super().__init__(spec, repr_dim=repr_dim, n_train=n_train, output_dim=output_dim)
        assert isinstance(spec.method, Paper)
        hidden = 2 * repr_dim
        self.generator = _mlp(repr_dim + spec.method.noise_dim, hidden, repr_dim)
        self.discriminator = _mlp(2 * repr_dim, hidden, 1)

    def generate(self, z_s: torch.Tensor) -> torch.Tensor:
        """G(z_S, noise): a prediction of the teacher's representation from the student's."""
        rows = len(z_s) * parallel.world_size()
        noise = torch.randn(rows, self.method.noise_dim, generator=self.draws, device=self.draws.device)
        noise = parallel.local(noise).to(device=z_s.device, dtype=z_s.dtype)
        return self.generator(torch.cat([z_s, noise], dim=1))

    def critic(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """D(z_S, t): the logit that (z_S, t) is a real student-teacher pair."""
        return self.discriminator(torch.cat([z_s, z_t], dim=1)).squeeze(1)

    def distill_terms(self, nets: Networks, batch: Batch, fwd: Forward, epoch: int) -> dict[str, torch.Tensor]:
        """The mi_joint_aux terms plus gamma * L_adv for the student and G (none in warm-up or at gamma 0)."""
        terms = super().distill_terms(nets, batch, fwd, epoch)
        if not terms or self.method.gamma == 0:
            return terms
        z_s, z_t = fwd.z["student"], fwd.z["teacher"].detach()
        fake = self.generate(z_s)
        recon = F.mse_loss(fake, z_t)
        adv = self.method.recon_weight * recon
        if self.method.fool_weight > 0:  # at 0 there is no adversary to train: D rests
            fake_logit = self.critic(z_s, fake)
            fool = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
            adv = adv + self.method.fool_weight * fool
            fwd.extras["fake"] = fake.detach()
        terms["adv"] = self.ramp(epoch) * self.method.gamma * adv
        return terms

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """D trains in its own optimiser."""
        return list(self.discriminator.parameters())

    def discriminator_step(self, fwd: Forward) -> dict[str, torch.Tensor]:
        """BCE of D on real (z_S, z_T) vs fake (z_S, G(z_S)) pairs, all detached; none when this step's
        fooling term did not run (warm-up, gamma 0, fool_weight 0), so D does not train against an idle G."""
        if "fake" not in fwd.extras:
            return {}
        z_s, z_t = fwd.z["student"].detach(), fwd.z["teacher"].detach()
        fake = fwd.extras["fake"]
        real_logit, fake_logit = self.critic(z_s, z_t), self.critic(z_s, fake)
        loss = F.binary_cross_entropy_with_logits(
            real_logit, torch.ones_like(real_logit)
        ) + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
        return {"disc": loss}
