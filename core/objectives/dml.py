"""dml: deep mutual learning among the three networks (Zhang et al., CVPR 2018; stage 1 of MST-Distill).

Teacher, auxiliary model and student train together from scratch; each minimises its task loss plus
``kd_weight`` times the mean of the temperature-softened KL toward each of the other two
(``hinton_kd``: T^2 KL, the other network's output detached). Unlabelled samples take part in every KL.
"""

from __future__ import annotations

import torch

from core.models.network import Networks
from core.objectives.base import NETWORKS, OBJECTIVES, Batch, Forward, Objective
from core.objectives.losses import hinton_kd
from core.spec import DML, JobSpec, TaskKind


def mutual_terms(
    task: TaskKind, outputs: dict[str, torch.Tensor], weight: float, temperature: float
) -> dict[str, torch.Tensor]:
    """``mutual_{name}`` per network: ``weight`` times the mean over the other two networks of the
    temperature-softened KL toward them (``hinton_kd``; the target detached, so each term trains its
    own network)."""
    terms = {}
    for name in NETWORKS:
        others = [other for other in NETWORKS if other != name]
        kl = torch.stack([hinton_kd(task, outputs[name], outputs[other], temperature) for other in others])
        terms[f"mutual_{name}"] = weight * kl.mean()
    return terms


@OBJECTIVES.register("dml")
class DMLObjective(Objective):
    """Each network n adds kd_weight * mean over m != n of T^2 KL(softmax(z_m/T) || softmax(z_n/T))."""

    method: DML

    def __init__(self, spec: JobSpec, *, repr_dim: int, n_train: int, output_dim: int | None = None) -> None:
        super().__init__(spec, repr_dim=repr_dim, n_train=n_train, output_dim=output_dim)
        assert isinstance(spec.method, DML)
        self.method = spec.method

    def distill_terms(self, nets: Networks, batch: Batch, fwd: Forward, epoch: int) -> dict[str, torch.Tensor]:
        """One term per network, ``mutual_{name}``."""
        return mutual_terms(self.task, fwd.out, self.method.kd_weight, self.method.kd_temperature)
