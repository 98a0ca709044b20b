"""logit_kd: Hinton KD from a pre-trained, frozen teacher (Hinton, Vinyals, Dean 2015)."""

from __future__ import annotations

import torch

from core.models.network import Networks
from core.objectives.base import OBJECTIVES, Batch, Forward
from core.objectives.frozen import FrozenTeacherObjective
from core.objectives.losses import hinton_kd
from core.spec import LogitKD


@OBJECTIVES.register("logit_kd")
class LogitKDObjective(FrozenTeacherObjective):
    """Phase 2 adds kd_weight * T^2 KL(softmax(t/T) || softmax(s/T)) on every sample."""

    method: LogitKD

    def distill_terms(self, nets: Networks, batch: Batch, fwd: Forward, epoch: int) -> dict[str, torch.Tensor]:
        """The KD term, in phase 2 only."""
        if not self.distilling(epoch):
            return {}
        kd = hinton_kd(self.task, fwd.out["student"], fwd.out["teacher"], self.method.kd_temperature)
        return {"kd": self.method.kd_weight * kd}
