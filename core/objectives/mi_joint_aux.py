"""mi_joint_aux: alpha * L_mi(T,S) + beta * L_mi(T,A), no adversarial term (the ablation)."""

from __future__ import annotations

import torch

from core.models.network import Networks
from core.objectives.base import OBJECTIVES, Batch, Forward
from core.objectives.joint import JointObjective
from core.objectives.losses import info_nce
from core.spec import JobSpec, MIJointAux, Paper


@OBJECTIVES.register("mi_joint_aux")
class MIJointAuxObjective(JointObjective):
    """Adds beta * InfoNCE(T, A): rewards the teacher for keeping auxiliary-only information."""

    method: MIJointAux | Paper

    def __init__(self, spec: JobSpec, *, repr_dim: int, n_train: int, output_dim: int | None = None) -> None:
        super().__init__(spec, repr_dim=repr_dim, n_train=n_train, output_dim=output_dim)
        self.proj_ta_teacher = self.projection()
        self.proj_ta_auxiliary = self.projection()

    def distill_terms(self, nets: Networks, batch: Batch, fwd: Forward, epoch: int) -> dict[str, torch.Tensor]:
        """The mi_joint terms plus beta * InfoNCE(T, A) (gradients into T and A)."""
        terms = super().distill_terms(nets, batch, fwd, epoch)
        if not terms:  # warm-up
            return terms
        assert isinstance(self.method, MIJointAux | Paper)
        mi_ta = info_nce(
            self.proj_ta_teacher(fwd.z["teacher"]),
            self.proj_ta_auxiliary(fwd.z["auxiliary"]),
            self.method.temperature,
        )
        terms["mi_ta"] = self.ramp(epoch) * self.method.beta * mi_ta
        return terms
