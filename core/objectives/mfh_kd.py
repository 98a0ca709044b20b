"""mfh_kd: distillation of the teacher's modality-general channels only (the modality focusing
hypothesis, Xue et al., ICLR 2023).

The two phases of the frozen-teacher baselines. When phase 2 starts, ``core.objectives.salience``
scores every channel of the teacher's representation z_T by how much of it the primary modalities
explain; the ``keep_ratio`` share chosen by ``channels`` (the most modality-general by default) is
kept and every other channel is replaced by its training-set mean. The student then minimises its
task loss plus ``kd_weight`` times Hinton KD toward the teacher's head applied to that masked z_T,
at ``kd_temperature`` (1, as in MFH), on every sample, unlabelled ones included.
"""

from __future__ import annotations

import torch

from core.models.network import Networks
from core.objectives.base import OBJECTIVES, Batch, Forward
from core.objectives.frozen import FrozenTeacherObjective
from core.objectives.losses import hinton_kd
from core.objectives.salience import channel_salience
from core.spec import MFHKD, JobSpec


@OBJECTIVES.register("mfh_kd")
class MFHKDObjective(FrozenTeacherObjective):
    """Phase 2: kd_weight * KD(student <- teacher head on z_T with only the kept channels)."""

    method: MFHKD

    def __init__(self, spec: JobSpec, *, repr_dim: int, n_train: int, output_dim: int | None = None) -> None:
        super().__init__(spec, repr_dim=repr_dim, n_train=n_train, output_dim=output_dim)
        assert isinstance(spec.method, MFHKD)
        self.method = spec.method
        self.kept: torch.Tensor
        self.channel_mean: torch.Tensor
        self.salience: torch.Tensor
        self.register_buffer("kept", torch.zeros(repr_dim))
        self.register_buffer("channel_mean", torch.zeros(repr_dim))
        self.register_buffer("salience", torch.full((repr_dim,), float("nan")))

    @property
    def chosen(self) -> bool:
        """Whether the channels were chosen (kept in checkpoints, so a resume does not choose again)."""
        return bool(self.kept.sum() > 0)

    def choose(self, r2: torch.Tensor) -> torch.Tensor:
        """A 0/1 mask over channels: ``keep_ratio`` of them (at least one) by ``channels``; ties by index."""
        count = max(1, round(self.method.keep_ratio * len(r2)))
        if self.method.channels == "random":
            generator = torch.Generator().manual_seed(self.spec.train.seed)
            order = torch.randperm(len(r2), generator=generator).to(r2.device)
        else:
            order = torch.sort(r2.cpu(), descending=self.method.channels == "general", stable=True).indices.to(
                r2.device
            )
        mask = torch.zeros_like(r2)
        mask[order[:count]] = 1.0
        return mask

    def begin_epoch(
        self, nets: Networks, inputs: dict[str, torch.Tensor], labels: torch.Tensor | None, epoch: int
    ) -> str | None:
        """At the first epoch of phase 2: score the teacher's channels and keep the chosen ones."""
        if not self.distilling(epoch) or self.chosen:
            return None
        found = channel_salience(nets.teacher, inputs, list(self.spec.dataset.primary), None)  # R^2 only
        self.salience.copy_(found.r2)
        self.channel_mean.copy_(found.mean)
        self.kept.copy_(self.choose(found.r2))
        kept = self.kept.bool()
        dropped = found.r2[~kept].mean().item() if (~kept).any() else float("nan")
        return (
            f"mfh_kd: keeping {int(kept.sum())} of {len(kept)} teacher channels ({self.method.channels}); "
            f"mean R^2 from the primary modalities {found.r2[kept].mean().item():.3f} kept, {dropped:.3f} dropped"
        )

    def teacher_logits(self, nets: Networks, z_teacher: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's head on z_T with the unkept channels at their mean."""
        masked = self.kept * z_teacher + (1 - self.kept) * self.channel_mean
        with torch.no_grad():
            return nets.teacher.head(masked)

    def distill_terms(self, nets: Networks, batch: Batch, fwd: Forward, epoch: int) -> dict[str, torch.Tensor]:
        """The KD term toward the masked teacher, in phase 2 only."""
        if not self.distilling(epoch):
            return {}
        assert self.chosen, "begin_epoch chooses the channels before phase 2's first step"
        target = self.teacher_logits(nets, fwd.z["teacher"].detach())
        kd = hinton_kd(self.task, fwd.out["student"], target, self.method.kd_temperature)
        return {"kd": self.method.kd_weight * kd}
