"""The tracker through which the trainer reports a job's progress and metrics to the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Any

from sqlalchemy import CursorResult, delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.errors import Pruned, TimedOut
from core.metrics import Point, train_points, validation_points
from core.tracking import CheckpointStore
from jobs.leases import LeaseLost, Liveness, last_checkpoint
from jobs.lifecycle import record_event
from jobs.models import Job, JobEvent, MetricPoint
from jobs.orm import utcnow
from jobs.status import ACTIVE, JobStatus
from studies.pruning import TrialPruning
from worker import telemetry


class DatabaseTracker:
    """Writes a job's progress, ETA and metric series to the database.

    Step losses are buffered and written in one transaction every ``flush_seconds`` (and at each
    epoch, checkpoint and the finish), never one transaction per scalar; the points are the job's
    metric record (``core.metrics`` names them). ``should_stop`` reads the job's status at most every
    ``poll_seconds`` and turns true on ``cancelling`` or a lost lease; past the attempt's deadline it
    raises :class:`TimedOut`. Every step, evaluation and checkpoint tells ``liveness`` that training
    moves, which is what keeps the lease renewed. A warning becomes a ``warning`` event (its kind under
    ``data.warning``) written at once, and only once per job: a resumed attempt that sees the same
    warning again adds nothing. Once the lease is lost nothing is written. A study's trial reports
    each validation to its pruner (``pruning``); once pruned, ``should_stop`` raises :class:`Pruned`.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        job_id: int,
        lease_owner: str,
        lease_lost: threading.Event,
        liveness: Liveness,
        flush_seconds: float = 2.0,
        poll_seconds: float = 1.0,
        pruning: TrialPruning | None = None,
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.lease_owner = lease_owner
        self.lease_lost = lease_lost
        self.liveness = liveness
        self.flush_seconds = flush_seconds
        self.poll_seconds = poll_seconds
        self._points: list[Point] = []
        self._progress: dict[str, Any] = {}
        self._latest: dict[str, float] = {}
        self._warnings: list[tuple[str, dict[str, Any]]] = []
        self._last_flush = self._last_poll = time.monotonic()
        self._cancel_seen = False
        self._timer_start = time.monotonic()
        self._timer_step = 0
        self._total_steps = 0
        self._last_step_at: float | None = None
        self.pruning = pruning
        self._pruned: str | None = None

    def on_start(self, *, total_epochs: int, steps_per_epoch: int, start_step: int) -> None:
        """Record the totals. A start past step 0 is a resume: it gets a ``resumed`` event, and the
        points the lost attempt wrote after its checkpoint are dropped (they are trained again)."""
        self.liveness.advanced(f"the start at step {start_step}")
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
        self.liveness.advanced(f"step {step}")
        now = time.monotonic()
        if self._last_step_at is not None:  # the wall time of a step: data, forward, backward, update
            telemetry.STEP_SECONDS.observe(now - self._last_step_at)
        self._last_step_at = now
        self._add(train_points(step=step, epoch=epoch, losses=losses))
        self._progress.update(epoch=epoch, step=step, eta_seconds=self._eta(step))
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def on_epoch(
        self, *, epoch: int, step: int, metrics: Mapping[str, float], student_epoch: int | None = None
    ) -> None:
        """Record validation metrics and flush; a study's trial reports the student's value to its pruner,
        at the student's own epoch count (so a frozen teacher's phase is compared with nothing)."""
        self.liveness.advanced(f"the validation at step {step}")
        self._add(validation_points(step=step, epoch=epoch, metrics=metrics))
        self._progress.update(epoch=epoch, step=step, eta_seconds=self._eta(step))
        self.flush()
        if self.pruning is not None and self._pruned is None and student_epoch is not None:
            self._pruned = self.pruning.check(epoch=student_epoch, metrics=metrics)

    def on_checkpoint(self, *, epoch: int, step: int, key: str) -> None:
        """Remember the newest checkpoint's key (written only after the checkpoint is stored)."""
        self.liveness.advanced(f"the checkpoint at step {step}")
        self._progress["last_checkpoint_key"] = key
        self.flush()

    def on_warning(self, *, kind: str, message: str, data: Mapping[str, Any]) -> None:
        """Record a ``warning`` event with the numbers, in the next write (now)."""
        self._warnings.append((message, {"warning": kind, **data}))
        self.flush()

    def busy(self, what: str) -> AbstractContextManager[None]:
        """A long stretch without steps: progress for the stall watch. Buffered points are written first:
        a checkpoint is stored inside such a stretch, and a worker killed after storing it but before
        ``on_checkpoint`` must not leave steps the resumed run will not train again unrecorded."""
        if self._points:
            self.flush()
        return self.liveness.busy(what)

    def should_stop(self) -> bool:
        """True once the job is ``cancelling`` or this worker lost its lease; raises
        :class:`TimedOut` (after writing what is buffered) once the attempt is past its deadline."""
        if self.lease_lost.is_set():
            return True
        if self._pruned is not None:
            raise Pruned(self._pruned)
        if self.liveness.past_deadline():
            self.flush()
            with self.sessions() as session:
                kept = last_checkpoint(session, self.job_id)
            raise TimedOut(self.liveness.max_minutes or 0.0, f"at step {self._progress.get('step')}; {kept}")
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
        if self.lease_lost.is_set():
            self._points, self._latest, self._warnings = [], {}, []
            return
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
                session.execute(insert(MetricPoint), [{"job_id": self.job_id, **asdict(p)} for p in self._points])
            self._record_warnings(session)
            session.commit()
        self._points, self._latest, self._warnings = [], {}, []
        self._last_flush = time.monotonic()

    def _record_warnings(self, session: Session) -> None:
        """Add the pending warnings' events, each kind once per job (an earlier attempt may have written it)."""
        if not self._warnings:
            return
        recorded = session.scalars(
            select(JobEvent.data).where(JobEvent.job_id == self.job_id, JobEvent.kind == "warning")
        ).all()
        seen = {data.get("warning") for data in recorded if data}
        for message, data in self._warnings:
            if data["warning"] not in seen:
                record_event(session, job_id=self.job_id, kind="warning", reason=message, data=data)
                seen.add(data["warning"])

    def _add(self, points: Iterable[Point]) -> None:
        for point in points:
            self._points.append(point)
            self._latest[point.name] = point.value

    def _eta(self, step: int) -> float | None:
        done = step - self._timer_step
        if done <= 0 or not self._total_steps:
            return None
        per_step = (time.monotonic() - self._timer_start) / done
        return max(self._total_steps - step, 0) * per_step


class LeasedCheckpoints:
    """A job's checkpoint store that refuses writes once the lease is lost: a stuck attempt that
    wakes after its heartbeat gave up must not add (or prune) checkpoints of a job it no longer owns."""

    def __init__(self, store: CheckpointStore, *, lease_lost: threading.Event) -> None:
        self.store = store
        self.lease_lost = lease_lost

    def save(self, step: int, payload: bytes) -> str:
        """Store the checkpoint while the lease is held."""
        if self.lease_lost.is_set():
            raise LeaseLost(f"lease lost; checkpoint at step {step} not written")
        with telemetry.CHECKPOINT_SECONDS.time():
            return self.store.save(step, payload)

    def load_latest(self) -> tuple[int, bytes] | None:
        """The newest checkpoint."""
        return self.store.load_latest()
