"""crd: contrastive representation distillation from a frozen teacher (Tian, Krishnan, Isola 2020).

Maximises only I(T;S). Negatives come from the batch (``n_neg = 0``: symmetric InfoNCE) or, for
small batches, from CRD-style memory banks of momentum-averaged embeddings (``n_neg`` per anchor):
L = -log( e^{<s_i,t_i>/tau} / (e^{<s_i,t_i>/tau} + sum_j e^{<s_i,bank_t[j]>/tau}) ), symmetrised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core import parallel
from core.models.network import Networks
from core.objectives.base import OBJECTIVES, Batch, Forward
from core.objectives.frozen import FrozenTeacherObjective
from core.objectives.losses import hinton_kd, info_nce, projection_head
from core.spec import CRD, JobSpec


def bank_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE of unit ``anchor`` rows against their ``positive`` and (B, n_neg, k) ``negatives``."""
    pos = (anchor * positive).sum(dim=1, keepdim=True)
    neg = torch.einsum("bk,bnk->bn", anchor, negatives)
    logits = torch.cat([pos, neg], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(anchor), dtype=torch.long, device=anchor.device))


@OBJECTIVES.register("crd")
class CRDObjective(FrozenTeacherObjective):
    """Phase 2 adds alpha * contrastive loss between embedded z_S and frozen z_T (+ optional KD)."""

    method: CRD

    def __init__(self, spec: JobSpec, *, repr_dim: int, n_train: int, output_dim: int | None = None) -> None:
        super().__init__(spec, repr_dim=repr_dim, n_train=n_train, output_dim=output_dim)
        k = self.method.proj_dim
        self.embed_student = projection_head(repr_dim, k, self.method.proj_layers)
        self.embed_teacher = projection_head(repr_dim, k, self.method.proj_layers)
        self.bank_student: torch.Tensor
        self.bank_teacher: torch.Tensor
        if self.method.n_neg > 0:
            self.register_buffer("bank_student", F.normalize(torch.randn(n_train, k), dim=1))
            self.register_buffer("bank_teacher", F.normalize(torch.randn(n_train, k), dim=1))

    def _sample_negatives(self, rows: torch.Tensor) -> torch.Tensor:
        shape = (len(rows) * parallel.world_size(), self.method.n_neg)
        drawn = torch.randint(0, self.n_train, shape, generator=self.draws, device=self.draws.device)
        negatives = parallel.local(drawn).to(rows.device)
        # A sample is never its own negative.
        return torch.where(negatives == rows[:, None], (negatives + 1) % self.n_train, negatives)

    @torch.no_grad()
    def _update_banks(self, rows: torch.Tensor, e_s: torch.Tensor, e_t: torch.Tensor) -> None:
        m = self.method.bank_momentum
        rows, e_s, e_t = (
            parallel.gather(rows),
            parallel.gather(e_s.detach()),
            parallel.gather(e_t.detach()),
        )  # every rank's
        for bank, new in ((self.bank_student, e_s), (self.bank_teacher, e_t)):
            bank[rows] = F.normalize(m * bank[rows] + (1 - m) * new.detach(), dim=1)

    def contrastive(self, z_s: torch.Tensor, z_t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The CRD loss for one batch (memory-bank or in-batch negatives)."""
        e_s = F.normalize(self.embed_student(z_s), dim=1)
        e_t = F.normalize(self.embed_teacher(z_t), dim=1)
        tau = self.method.temperature
        if self.method.n_neg == 0:
            return info_nce(e_s, e_t, tau)
        negatives = self._sample_negatives(rows)
        loss = 0.5 * (
            bank_nce(e_s, e_t, self.bank_teacher[negatives], tau)
            + bank_nce(e_t, e_s, self.bank_student[negatives], tau)
        )
        self._update_banks(rows, e_s, e_t)
        return loss

    def distill_terms(self, nets: Networks, batch: Batch, fwd: Forward, epoch: int) -> dict[str, torch.Tensor]:
        """alpha * CRD (+ kd_weight * Hinton KD), in phase 2 only."""
        if not self.distilling(epoch):
            return {}
        terms = {"crd": self.method.alpha * self.contrastive(fwd.z["student"], fwd.z["teacher"].detach(), batch.rows)}
        if self.method.kd_weight > 0:
            kd = hinton_kd(self.task, fwd.out["student"], fwd.out["teacher"], self.method.kd_temperature)
            terms["kd"] = self.method.kd_weight * kd
        return terms
