"""What every method is: extra trainable modules plus a function from a batch to named losses.

A method (mdistiller style) returns its loss terms as a dict of already-weighted scalars; the
trainer sums them and logs each by name. ``roles`` tells the trainer which networks train, which
only run frozen, and which sit idle in a given epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from core.models.network import Networks
from core.objectives.losses import info_nce, task_loss
from core.registry import Registry
from core.spec import JobSpec

Role = Literal["train", "frozen", "idle"]
NETWORKS = ("student", "teacher", "auxiliary")


@dataclass
class Batch:
    """A training batch: inputs by modality, labels (masked: -1/NaN), rows within the train split."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    rows: torch.Tensor


@dataclass
class Forward:
    """What the networks produced for a batch: representation z and head output per network."""

    z: dict[str, torch.Tensor]
    out: dict[str, torch.Tensor]
    target: dict[str, torch.Tensor]  # retrieval: embedding of the retrieved modality
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # a method's values for its D step


class Objective(nn.Module):
    """Base of every method. Subclasses add modules in ``__init__`` and terms in ``distill_terms``."""

    def __init__(self, spec: JobSpec, *, repr_dim: int, n_train: int, output_dim: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.task = spec.task
        self.repr_dim = repr_dim
        self.n_train = n_train
        self.output_dim = output_dim  # the heads' width (classes); None where a caller does not know it
        # The random draws of a batch (noise, sampled negatives): drawn for the global batch from a
        # generator every rank holds in the same state, then sliced (core.parallel). A run checkpoints
        # its state (core.engine.setup.Run.state_dict).
        self.draws = torch.Generator().manual_seed(spec.train.seed)

    @property
    def total_epochs(self) -> int:
        """Epochs the whole run takes (frozen-teacher methods add the teacher's pre-training)."""
        return self.spec.train.epochs

    def window(self, group: str) -> tuple[int, int]:
        """(first epoch, epochs) in which a parameter group trains: its learning-rate schedule window."""
        return 0, self.total_epochs

    def roles(self, epoch: int) -> dict[str, Role]:
        """Joint training by default: all three networks train every epoch."""
        return {name: "train" for name in NETWORKS}

    def distilling(self, epoch: int) -> bool:
        """Whether the distillation terms act in ``epoch``: always for a method that has any
        (``core.engine.health`` watches the networks from then on); subclasses with phases say when."""
        return type(self).distill_terms is not Objective.distill_terms

    def losses(self, nets: Networks, batch: Batch, fwd: Forward, epoch: int) -> dict[str, torch.Tensor]:
        """Task losses of the networks that train, plus the method's distillation terms."""
        terms = {}
        for name, role in self.roles(epoch).items():
            if role == "train":
                terms[f"task_{name}"] = self.task_term(name, batch, fwd)
        terms.update(self.distill_terms(nets, batch, fwd, epoch))
        return terms

    def task_term(self, name: str, batch: Batch, fwd: Forward) -> torch.Tensor:
        """The supervised loss of one network (retrieval: InfoNCE against its target encoder)."""
        if self.task == "retrieval":
            return info_nce(fwd.out[name], fwd.target[name], temperature=0.1)
        return task_loss(self.task, fwd.out[name], batch.labels, label_smoothing=self.spec.train.label_smoothing)

    def distill_terms(self, nets: Networks, batch: Batch, fwd: Forward, epoch: int) -> dict[str, torch.Tensor]:
        """The method's own terms; none in the base class."""
        return {}

    def begin_epoch(
        self, nets: Networks, inputs: dict[str, torch.Tensor], labels: torch.Tensor | None, epoch: int
    ) -> str | None:
        """Called before each epoch's steps (also the first after a resume) with the whole training split;
        a method that must look at all of it once (mfh_kd's channel choice) does so here, keeping what it
        found in buffers so that a checkpoint holds it. Returns a line for the job's log, or None."""
        return None

    def module_groups(self) -> dict[str, list[nn.Parameter]]:
        """The method's own trainable parameters in named optimiser groups, each with its ``window``; the
        discriminator's are left out (own optimiser). One group, ``method``, unless a method's modules train
        in different stages (mst_distill's MaskNets, then its gate)."""
        disc = {id(p) for p in self.discriminator_parameters()}
        return {"method": [p for p in self.parameters() if id(p) not in disc]}

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """Parameters trained in a separate, alternating optimiser step (the adversarial D)."""
        return []

    def discriminator_step(self, fwd: Forward) -> dict[str, torch.Tensor]:
        """The loss of the separate step, from detached representations; empty when none."""
        return {}


OBJECTIVES: Registry[type[Objective]] = Registry("method")
