"""The tracker through which the trainer reports a job's progress and metrics to the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import CursorResult, delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from jobs.lifecycle import record_event
from jobs.models import Job, MetricPoint
from jobs.orm import utcnow
from jobs.status import ACTIVE, JobStatus


class DatabaseTracker:
    """Writes a job's progress, ETA and metric series to the database.

    Step losses are buffered and written in one transaction every ``flush_seconds`` (and at each
    epoch, checkpoint and the finish), never one transaction per scalar. ``should_stop`` reads the
    job's status at most every ``poll_seconds`` and turns true on ``cancelling`` or a lost lease.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        job_id: int,
        lease_owner: str,
        lease_lost: threading.Event,
        flush_seconds: float = 2.0,
        poll_seconds: float = 1.0,
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.lease_owner = lease_owner
        self.lease_lost = lease_lost
        self.flush_seconds = flush_seconds
        self.poll_seconds = poll_seconds
        self._points: list[dict[str, Any]] = []
        self._progress: dict[str, Any] = {}
        self._latest: dict[str, float] = {}
        self._last_flush = self._last_poll = time.monotonic()
        self._cancel_seen = False
        self._timer_start = time.monotonic()
        self._timer_step = 0
        self._total_steps = 0

    def on_start(self, *, total_epochs: int, steps_per_epoch: int, start_step: int) -> None:
        """Record the totals. A start past step 0 is a resume: it gets a ``resumed`` event, and the
        points the lost attempt wrote after its checkpoint are dropped (they are trained again)."""
        self._total_steps = total_epochs * steps_per_epoch
        self._timer_start, self._timer_step = time.monotonic(), start_step
        self._progress = {"total_epochs": total_epochs, "total_steps": self._total_steps, "step": start_step}
        with self.sessions() as session:
            if start_step > 0:
                session.execute(
                    delete(MetricPoint).where(MetricPoint.job_id == self.job_id, MetricPoint.step > start_step)
                )
                record_event(
                    session,
                    job_id=self.job_id,
                    kind="resumed",
                    reason=f"resumed from the checkpoint at step {start_step}",
                    data={"step": start_step},
                )
            self._write(session)

    def on_step(self, *, epoch: int, step: int, losses: Mapping[str, float]) -> None:
        """Buffer the step's loss terms; flush when the batch is old enough."""
        self._add(step, epoch, {f"train/{name}": value for name, value in losses.items()})
        self._progress.update(epoch=epoch, step=step, eta_seconds=self._eta(step))
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def on_epoch(self, *, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        """Record validation metrics and flush."""
        self._add(step, epoch, {f"val/{name}": value for name, value in metrics.items()})
        self._progress.update(epoch=epoch, step=step, eta_seconds=self._eta(step))
        self.flush()

    def on_checkpoint(self, *, epoch: int, step: int, key: str) -> None:
        """Remember the newest checkpoint's key (written only after the checkpoint is stored)."""
        self._progress["last_checkpoint_key"] = key
        self.flush()

    def should_stop(self) -> bool:
        """True once the job is ``cancelling`` or this worker lost its lease."""
        if self.lease_lost.is_set():
            return True
        now = time.monotonic()
        if not self._cancel_seen and now - self._last_poll >= self.poll_seconds:
            self._last_poll = now
            with self.sessions() as session:
                status = session.scalar(select(Job.status).where(Job.id == self.job_id))
            self._cancel_seen = status == JobStatus.CANCELLING
        return self._cancel_seen

    def on_finish(self, *, summary: Mapping[str, Any]) -> None:
        """Write what is still buffered."""
        self._progress["eta_seconds"] = 0.0
        self.flush()

    def flush(self) -> None:
        """Write buffered points and progress in one transaction."""
        with self.sessions() as session:
            self._write(session)

    def _write(self, session: Session) -> None:
        """Update the job only while this worker holds its lease; otherwise drop the batch."""
        values = dict(self._progress, updated_at=utcnow())
        if self._latest:
            current = session.scalar(select(Job.latest_metrics).where(Job.id == self.job_id))
            values["latest_metrics"] = {**(current or {}), **self._latest}
        owned: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            update(Job)
            .where(Job.id == self.job_id, Job.lease_owner == self.lease_owner, Job.status.in_(ACTIVE))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if owned.rowcount != 1:
            session.rollback()
            self.lease_lost.set()
        else:
            if self._points:
                session.execute(insert(MetricPoint), self._points)
            session.commit()
        self._points, self._latest = [], {}
        self._last_flush = time.monotonic()

    def _add(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self._points.append(
                {"job_id": self.job_id, "step": step, "epoch": epoch, "name": name, "value": float(value)}
            )
            self._latest[name] = float(value)

    def _eta(self, step: int) -> float | None:
        done = step - self._timer_step
        if done <= 0 or not self._total_steps:
            return None
        per_step = (time.monotonic() - self._timer_start) / done
        return max(self._total_steps - step, 0) * per_step
