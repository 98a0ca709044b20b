"""Which epoch's weights a run evaluates on test and exports (``train.select``).

With ``best_val`` the trainer offers every validated epoch in which the student trained; the
student's validation primary metric (``PRIMARY_METRIC``, in its direction) decides, ties going to
the later epoch. The weights of all three networks at that epoch are copied, so the teacher's and
the auxiliary model's reported test metrics are those of the same epoch as the student's. The
copy travels in checkpoints, so a resumed run selects the same epoch as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from core.engine.evaluation import at_least_as_good
from core.metrics import PRIMARY_METRIC
from core.spec import JobSpec


class EpochSelection:
    """The best validated epoch so far and a copy of the networks' weights then; empty under ``last``."""

    def __init__(self, spec: JobSpec) -> None:
        self.enabled = spec.train.select == "best_val"
        self.metric = PRIMARY_METRIC[spec.task]
        self.epoch: int | None = None
        self.value: float | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def offer(self, epoch: int, metrics: Mapping[str, float], nets: nn.Module) -> None:
        """Keep ``nets``' weights after ``epoch`` (1-based) if the student's validation value is the best yet."""
        value = metrics[f"student/{self.metric}"]
        if not self.enabled or not math.isfinite(value):
            return
        if self.value is not None and not at_least_as_good(self.metric, value, self.value):
            return
        self.epoch, self.value = epoch, value
        self.weights = {key: tensor.detach().clone() for key, tensor in nets.state_dict().items()}

    def apply(self, nets: nn.Module, last_epoch: int) -> int:
        """Load the selected weights into ``nets``; the selected epoch (``last_epoch`` when none was kept)."""
        if self.weights is None or self.epoch is None:
            return last_epoch
        nets.load_state_dict(self.weights)
        return self.epoch

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores: the epoch, its value and the weights (None under ``last``)."""
        return {"epoch": self.epoch, "value": self.value, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore a ``state_dict``; None (a checkpoint written before selection existed) keeps nothing."""
        state = state or {"epoch": None, "value": None, "weights": None}
        self.epoch, self.value, self.weights = state["epoch"], state["value"], state["weights"]
