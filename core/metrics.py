"""Metric points and their names: the one module that knows a series is called ``train/{term}``
(a loss term at a step) or ``val/{network}/{metric}`` (a validation metric after an epoch), and how
points become ``metrics.jsonl`` lines and the report's curves.

The worker's record is the database's points, the CLI's record is its ``metrics.jsonl``; both
name points here and render them here, so a file, the report and the API's series always agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

TRAIN, VALIDATION = "train", "val"
#: The metric that judges a network, per task (best-epoch selection, warnings, what pages show).
PRIMARY_METRIC: dict[str, str] = {
    "classification": "accuracy",
    "multilabel": "mean_ap",
    "regression": "mae",
    "retrieval": "r@1",
}
LOWER_IS_BETTER = frozenset({"mae", "median_rank"})
#: Every metric a network is scored with, per task (``core.engine.evaluation`` computes them).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "multilabel": ("mean_ap", "f1"),
    "regression": ("mae", "pearson_r"),
    "retrieval": ("r@1", "r@5", "r@10", "median_rank"),
}
Series = dict[str, list[tuple[int, float]]]


@dataclass(frozen=True)
class Point:
    """One value of one named series at one step: the shape of a database row, a jsonl line and
    an item of the API's metric series."""

    step: int
    epoch: int | None
    name: str
    value: float


def _points(kind: str, step: int, epoch: int, values: Mapping[str, float]) -> list[Point]:
    return [Point(step, epoch, f"{kind}/{name}", float(value)) for name, value in values.items()]


def train_points(*, step: int, epoch: int, losses: Mapping[str, float]) -> list[Point]:
    """A step's loss terms (``total`` included) as ``train/{term}`` points."""
    return _points(TRAIN, step, epoch, losses)


def validation_points(*, step: int, epoch: int, metrics: Mapping[str, float]) -> list[Point]:
    """An evaluation's ``{network}/{metric}`` values as ``val/{network}/{metric}`` points."""
    return _points(VALIDATION, step, epoch, metrics)


def is_validation(name: str) -> bool:
    """True for a validation metric's series, False for a training loss term's."""
    return name.startswith(VALIDATION + "/")


def label(name: str) -> str:
    """The series name without its ``train/`` or ``val/`` part, for a legend."""
    return name.split("/", 1)[-1]


def to_jsonl(points: Iterable[Point]) -> str:
    """``metrics.jsonl``: one JSON object per point, in the order given."""
    return "".join(json.dumps(asdict(point)) + "\n" for point in points)


def from_jsonl(text: str) -> list[Point]:
    """The points of a ``metrics.jsonl`` written by :func:`to_jsonl`."""
    return [Point(**json.loads(line)) for line in text.splitlines() if line.strip()]


def series(points: Iterable[Point]) -> Series:
    """``(step, value)`` pairs by series name, in the order given."""
    found: Series = {}
    for point in points:
        found.setdefault(point.name, []).append((point.step, point.value))
    return found
