"""c2kd: cross-modal KD with proxies and on-the-fly non-target selection (Huo et al., CVPR 2024).

Two phases in one run, like the frozen-teacher baselines: for ``teacher_epochs`` the teacher and
the auxiliary model train on their task losses; then the teacher keeps training beside the student
(C2KD's teacher is pre-trained and stays in the optimiser). Each of the two has a proxy head on its
representation (Linear -> BatchNorm -> LeakyReLU(0.1) -> Linear, as in MST-Distill's C2KD for
vector features). In phase 2, with ``KL(a <- b)`` the per-sample KL toward a detached ``b`` at
temperature 1:

    L_T = CE(z_t) + w_p [KL(p_t <- z_t) + KL(z_t <- p_t)] + w_nt NT(p_t <- p_s)
    L_S = CE(z_s) + w_p [KL(p_s <- z_s) + KL(z_s <- p_s)] + w_nt NT(p_s <- p_t)

NT is the non-target KL (the class's logit multiplied by 0 on both sides), averaged over the
samples whose proxies rank the classes alike (Kendall's tau above ``tau_threshold``, every sample at
-1; the batch size is the denominator, as in the reference code). Unlabelled samples take part in every KL and
in NT, with the teacher's predicted class as their "target" (our choice: the source is fully
supervised).
"""

from __future__ import annotations

import torch
from torch import nn

from core.errors import SpecError
from core.models.network import Networks
from core.objectives.base import OBJECTIVES, Batch, Forward, Role
from core.objectives.frozen import FrozenTeacherObjective
from core.objectives.losses import kendall_tau, kl_to, non_target_kl
from core.spec import C2KD, JobSpec


def proxy_head(repr_dim: int, classes: int) -> nn.Module:
    """C2KD's proxy on a vector representation."""
    return nn.Sequential(
        nn.Linear(repr_dim, repr_dim), nn.BatchNorm1d(repr_dim), nn.LeakyReLU(0.1), nn.Linear(repr_dim, classes)
    )


#: The most classes c2kd accepts: its ranking agreement compares every pair of classes per sample
#: (2048^2 comparisons, 16 MiB per sample), so far more classes would make each step crawl.
MAX_CLASSES = 2048


@OBJECTIVES.register("c2kd")
class C2KDObjective(FrozenTeacherObjective):
    """Phase 1: teacher + auxiliary pre-train. Phase 2: teacher and student train with proxies."""

    method: C2KD

    def __init__(self, spec: JobSpec, *, repr_dim: int, n_train: int, output_dim: int | None = None) -> None:
        super().__init__(spec, repr_dim=repr_dim, n_train=n_train, output_dim=output_dim)
        assert isinstance(spec.method, C2KD) and output_dim is not None, "c2kd's proxies need the number of classes"
        if output_dim > MAX_CLASSES:
            raise SpecError(
                "method.name",
                f"c2kd compares every pair of classes per sample and accepts at most {MAX_CLASSES} classes; "
                f"this dataset has {output_dim}: use logit_kd or mfh_kd",
            )
        self.method = spec.method
        self.proxy_teacher = proxy_head(repr_dim, output_dim)
        self.proxy_student = proxy_head(repr_dim, output_dim)

    def window(self, group: str) -> tuple[int, int]:
        """The teacher trains through both phases; the auxiliary model in phase 1; student and proxies in phase 2."""
        if group == "teacher":
            return 0, self.total_epochs
        return super().window(group)

    def roles(self, epoch: int) -> dict[str, Role]:
        """Phase 2 trains the teacher too (it stays in the optimiser)."""
        if self.distilling(epoch):
            return {"student": "train", "teacher": "train", "auxiliary": "idle"}
        return super().roles(epoch)

    def distill_terms(self, nets: Networks, batch: Batch, fwd: Forward, epoch: int) -> dict[str, torch.Tensor]:
        """The proxy KLs of both sides and the non-target terms between the proxies, in phase 2 only."""
        if not self.distilling(epoch):
            return {}
        z_t, z_s = fwd.out["teacher"], fwd.out["student"]
        p_t, p_s = self.proxy_teacher(fwd.z["teacher"]), self.proxy_student(fwd.z["student"])
        weight = self.method.proxy_weight
        labels = batch.labels
        assert labels is not None
        classes = torch.where(labels >= 0, labels, z_t.detach().argmax(dim=1))
        agree = (kendall_tau(p_t.detach(), p_s.detach()) > self.method.tau_threshold).float()
        if self.method.tau_threshold <= -1:  # -1 distils every sample, perfectly reversed rankings included
            agree = torch.ones_like(agree)
        return {
            "proxy_teacher": weight * (kl_to(p_t, z_t) + kl_to(z_t, p_t)).mean(),
            "proxy_student": weight * (kl_to(p_s, z_s) + kl_to(z_s, p_s)).mean(),
            "nt_teacher": self.method.nt_weight * (agree * non_target_kl(p_t, p_s, classes)).mean(),
            "nt_student": self.method.nt_weight * (agree * non_target_kl(p_s, p_t, classes)).mean(),
        }
