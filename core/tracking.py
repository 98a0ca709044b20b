"""The two small protocols through which the trainer talks to the outside world.

``Tracker`` receives progress and metrics (the CLI writes metrics.jsonl and a progress bar; the
worker writes to the database and watches for a stalled loop) and may ask the trainer to stop.
``CheckpointStore`` keeps opaque checkpoint blobs (a local folder for the CLI, S3 for the worker).
Neither knows about torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol


class Tracker(Protocol):
    """Receives what the trainer reports, in order: start, steps and epochs (and any warning), finish."""

    def on_start(self, *, total_epochs: int, steps_per_epoch: int, start_step: int) -> None:
        """Training begins (``start_step`` > 0 when resumed from a checkpoint)."""

    def on_step(self, *, epoch: int, step: int, losses: Mapping[str, float]) -> None:
        """One optimisation step finished; ``losses`` holds every named loss term and ``total``."""

    def on_epoch(
        self, *, epoch: int, step: int, metrics: Mapping[str, float], student_epoch: int | None = None
    ) -> None:
        """An epoch ended; ``metrics`` holds validation metrics named ``{network}/{metric}``. When the student
        trained in this epoch, ``student_epoch`` counts the epochs it has trained so far (a frozen-teacher
        method's teacher phase is not among them): what a study's pruner compares across methods."""

    def on_checkpoint(self, *, epoch: int, step: int, key: str) -> None:
        """A checkpoint was stored under ``key``."""

    def on_warning(self, *, kind: str, message: str, data: Mapping[str, Any]) -> None:
        """A warning about the run (``core.engine.health``: ``weak_teacher``, ``student_regressed``), once
        per run: ``message`` is one line, ``data`` the numbers behind it. The summary lists it too."""

    def busy(self, what: str) -> AbstractContextManager[None]:
        """Brackets a stretch that is progress without steps (setup, an evaluation, a checkpoint,
        the export): a worker's stall watch must not take it for a hung loop."""

    def should_stop(self) -> bool:
        """True to stop at the next step boundary (a cancel request). May raise instead, with
        the reason (a worker's time limit)."""

    def on_finish(self, *, summary: Mapping[str, Any]) -> None:
        """Training and the final test evaluation are done."""


class CheckpointStore(Protocol):
    """Keeps checkpoint blobs by step; ``load_latest`` returns the newest complete one."""

    def save(self, step: int, payload: bytes) -> str:
        """Store ``payload`` atomically for ``step`` and return its key."""

    def load_latest(self) -> tuple[int, bytes] | None:
        """The newest checkpoint as ``(step, payload)``, or None when there is none."""


class NullTracker:
    """A tracker that records nothing and never stops training."""

    def on_start(self, *, total_epochs: int, steps_per_epoch: int, start_step: int) -> None:
        """Ignore."""

    def on_step(self, *, epoch: int, step: int, losses: Mapping[str, float]) -> None:
        """Ignore."""

    def on_epoch(
        self, *, epoch: int, step: int, metrics: Mapping[str, float], student_epoch: int | None = None
    ) -> None:
        """Ignore."""

    def on_checkpoint(self, *, epoch: int, step: int, key: str) -> None:
        """Ignore."""

    def on_warning(self, *, kind: str, message: str, data: Mapping[str, Any]) -> None:
        """Ignore."""

    def busy(self, what: str) -> AbstractContextManager[None]:
        """Ignore."""
        return nullcontext()

    def should_stop(self) -> bool:
        """Never stop."""
        return False

    def on_finish(self, *, summary: Mapping[str, Any]) -> None:
        """Ignore."""
