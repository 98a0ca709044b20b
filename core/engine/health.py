"""Warnings during a run, from the validation metrics the trainer computes after each evaluated epoch.

Two warnings, each emitted at most once per run, carrying its numbers:

- ``weak_teacher`` (issue 8, item 5): the teacher's validation primary metric falls clearly below its
  own best once the distillation terms act (the weak-teacher failure of joint training, see
  docs/results.md). Only while the teacher trains: a frozen-teacher method (logit_kd, feature_kd, crd)
  freezes it before its distillation phase, so the check never applies to them.
- ``student_regressed`` (item 4): the student's validation primary metric falls clearly below its own
  earlier level while it distils (the fragility of frozen-teacher KD on tiny data). Its earlier level
  is its best over the evaluations in which it trained (a frozen-teacher method's untrained phase-1
  student is not a reference).

"Clearly below" is one rule for both. With ``best`` the network's best value so far (in the metric's
direction, ``PRIMARY_METRIC``), ``noise`` the median absolute change between its consecutive
evaluations so far, and ``floor`` 2 points for a metric in [0, 1] or 5 % of ``best`` for an error
(mae), a value is below when it is worse than ``best`` by more than ``max(floor, 3 * noise)``; the
warning fires at the second consecutive such evaluation after the distillation terms start. The
median keeps one sudden drop from widening its own threshold; two evaluations in a row keep one
unlucky validation from firing it. The state travels in checkpoints, so a resumed run warns as an
uninterrupted one does.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any, Literal

from core.metrics import LOWER_IS_BETTER

WarningKind = Literal["weak_teacher", "student_regressed"]
NOISE_MULTIPLE = 3.0
MIN_DROP_POINTS = 0.02  # metrics in [0, 1]: 2 points
MIN_DROP_RELATIVE = 0.05  # errors (lower is better, unbounded): 5 % of the best value
CONSECUTIVE = 2
WATCHED: dict[WarningKind, str] = {"weak_teacher": "teacher", "student_regressed": "student"}


@dataclass(frozen=True)
class RunWarning:
    """One warning and the numbers behind it (epochs are 1-based, as the tracker reports them)."""

    kind: WarningKind
    network: str
    metric: str
    best: float
    best_epoch: int
    value: float
    epoch: int
    threshold: float

    @property
    def message(self) -> str:
        """One line, with the numbers."""
        what = "weak teacher" if self.kind == "weak_teacher" else "student regressed"
        hint = (
            "the distillation terms are pulling the teacher away from its task"
            if self.kind == "weak_teacher"
            else "distillation may be hurting the student on this data; compare with student_only"
        )
        return (
            f"{what}: the {self.network}'s validation {self.metric} is {self.value:.4f} at epoch {self.epoch}, "
            f"worse than its best {self.best:.4f} (epoch {self.best_epoch}) by more than {self.threshold:.4f} "
            f"for {CONSECUTIVE} evaluations in a row since the distillation terms started; {hint}"
        )

    def data(self) -> dict[str, Any]:
        """The numbers, for an event or the summary."""
        return {key: value for key, value in asdict(self).items() if key != "kind"}


def threshold(metric: str, best: float, values: list[float]) -> float:
    """How far below ``best`` a value must be to count: ``max(floor, NOISE_MULTIPLE * noise)``."""
    floor = MIN_DROP_RELATIVE * abs(best) if metric in LOWER_IS_BETTER else MIN_DROP_POINTS
    changes = [abs(later - earlier) for earlier, later in pairwise(values)]
    noise = statistics.median(changes) if changes else 0.0
    return max(floor, NOISE_MULTIPLE * noise)


class RunHealth:
    """Watches one run's validation primary metric per network and decides the warnings."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.series: dict[str, list[tuple[int, float]]] = {}
        self.below: dict[str, int] = {kind: 0 for kind in WATCHED}
        self.warnings: list[RunWarning] = []

    def observe(
        self, epoch: int, metrics: Mapping[str, float], *, training: Collection[str], distilling: bool
    ) -> list[RunWarning]:
        """Take the validation after ``epoch`` (1-based); the warnings that fire now.

        ``training`` names the networks that trained in that epoch (only their values are history),
        ``distilling`` says whether the method's distillation terms acted in it.
        """
        for network in training:
            value = metrics.get(f"{network}/{self.metric}", math.nan)
            if math.isfinite(value):
                self.series.setdefault(network, []).append((epoch, value))
        fired = []
        for kind, network in WATCHED.items():
            history = self.series.get(network, [])
            watched = distilling and network in training and bool(history) and history[-1][0] == epoch
            self.below[kind] = self.below[kind] + 1 if watched and self._worse(kind, history) else 0
            if self.below[kind] >= CONSECUTIVE and kind not in {w.kind for w in self.warnings}:
                fired.append(self._warning(kind, history))
        self.warnings.extend(fired)
        return fired

    def _best(self, history: list[tuple[int, float]]) -> tuple[int, float]:
        lower = self.metric in LOWER_IS_BETTER
        return min(history, key=lambda point: (point[1] if lower else -point[1], point[0]))

    def _worse(self, kind: WarningKind, history: list[tuple[int, float]]) -> bool:
        _, best = self._best(history)
        margin = threshold(self.metric, best, [value for _, value in history])
        value = history[-1][1]
        return value > best + margin if self.metric in LOWER_IS_BETTER else value < best - margin

    def _warning(self, kind: WarningKind, history: list[tuple[int, float]]) -> RunWarning:
        best_epoch, best = self._best(history)
        epoch, value = history[-1]
        margin = threshold(self.metric, best, [v for _, v in history])
        return RunWarning(kind, WATCHED[kind], self.metric, best, best_epoch, value, epoch, margin)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores: the series, the running counts and the warnings given."""
        return {
            "series": {network: [list(point) for point in points] for network, points in self.series.items()},
            "below": dict(self.below),
            "warnings": [asdict(warning) for warning in self.warnings],
        }

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore a ``state_dict``; None (a checkpoint written before these warnings) starts afresh."""
        if state is None:
            return
        self.series = {network: [(int(e), float(v)) for e, v in points] for network, points in state["series"].items()}
        self.below = {kind: int(state["below"].get(kind, 0)) for kind in WATCHED}
        self.warnings = [RunWarning(**warning) for warning in state["warnings"]]
