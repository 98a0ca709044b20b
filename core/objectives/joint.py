"""Shared machinery of the jointly trained methods (mi_joint, mi_joint_aux, paper).

All three networks train from scratch together. The distillation terms switch on after
``warmup_epochs`` and may ramp linearly over ``ramp_epochs``; unlabelled samples take part in every
term here, since none of them needs a label.
"""

from __future__ import annotations

import torch

from core.models.network import Networks
from core.objectives.base import Batch, Forward, Objective
from core.objectives.losses import hinton_kd, info_nce, projection_head
from core.spec import JobSpec, MIJoint, MIJointAux, Paper


class JointObjective(Objective):
    """Task losses + alpha * L_mi(T,S) [+ optional logit KD T->S]; subclasses add more terms."""

    method: MIJoint | MIJointAux | Paper

    def __init__(self, spec: JobSpec, *, repr_dim: int, n_train: int, output_dim: int | None = None) -> None:
        super().__init__(spec, repr_dim=repr_dim, n_train=n_train, output_dim=output_dim)
        assert isinstance(spec.method, MIJoint | MIJointAux | Paper)
        self.method = spec.method
        self.proj_ts_teacher = self.projection()
        self.proj_ts_student = self.projection()

    def projection(self) -> torch.nn.Module:
        """A fresh contrastive projection head d -> k."""
        return projection_head(self.repr_dim, self.method.proj_dim, self.method.proj_layers)

    def ramp(self, epoch: int) -> float:
        """0 during warm-up, then a linear ramp to 1 over ``ramp_epochs`` (1 at once when 0)."""
        after = epoch - self.method.warmup_epochs
        if after < 0:
            return 0.0
        if self.method.ramp_epochs == 0:
            return 1.0
        return min(1.0, (after + 1) / self.method.ramp_epochs)

    def distilling(self, epoch: int) -> bool:
        """True once the warm-up is over (the ramp is above 0)."""
        return self.ramp(epoch) > 0

    def distill_terms(self, nets: Networks, batch: Batch, fwd: Forward, epoch: int) -> dict[str, torch.Tensor]:
        """alpha * InfoNCE(T, S) (gradients into both networks) and the optional logit KD; none in warm-up.

        In warm-up the terms are left out, not multiplied by 0: a zero-weighted term would still hand
        its heads zero gradients, and AdamW would then decay them and count steps for them.
        """
        scale = self.ramp(epoch)
        if scale == 0:
            return {}
        z_t, z_s = fwd.z["teacher"], fwd.z["student"]
        tau = self.method.temperature
        terms = {
            "mi_ts": scale * self.method.alpha * info_nce(self.proj_ts_teacher(z_t), self.proj_ts_student(z_s), tau)
        }
        if self.method.kd_weight > 0:
            kd = hinton_kd(self.task, fwd.out["student"], fwd.out["teacher"], self.method.kd_temperature)
            terms["kd"] = scale * self.method.kd_weight * kd
        return terms
