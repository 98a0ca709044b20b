"""feature_kd: FitNets-style hint regression (Romero et al. 2015) onto a frozen teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.models.network import Networks
from core.objectives.base import OBJECTIVES, Batch, Forward
from core.objectives.frozen import FrozenTeacherObjective
from core.spec import FeatureKD, JobSpec


@OBJECTIVES.register("feature_kd")
class FeatureKDObjective(FrozenTeacherObjective):
    """Phase 2 adds feature_weight * ||r(z_S) - z_T||^2 with a trained linear regressor r."""

    method: FeatureKD

    def __init__(self, spec: JobSpec, *, repr_dim: int, n_train: int, output_dim: int | None = None) -> None:
        super().__init__(spec, repr_dim=repr_dim, n_train=n_train, output_dim=output_dim)
        self.regressor = nn.Linear(repr_dim, repr_dim)

    def distill_terms(self, nets: Networks, batch: Batch, fwd: Forward, epoch: int) -> dict[str, torch.Tensor]:
        """The hint loss, in phase 2 only."""
        if not self.distilling(epoch):
            return {}
        hint = F.mse_loss(self.regressor(fwd.z["student"]), fwd.z["teacher"].detach())
        return {"hint": self.method.feature_weight * hint}
