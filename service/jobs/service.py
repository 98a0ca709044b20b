"""Job logic: submission with idempotency, cancellation, and the state-transition helpers the worker
reuses. No FastAPI here; functions take a SQLAlchemy session and keyword-only arguments."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

from sqlalchemy import Table, insert, select, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from core.spec import JobSpec
from service.exceptions import ConflictError, InvalidRequestError, InvalidTransitionError
from service.jobs.models import TERMINAL_STATUSES, Artifact, Job, JobEvent, MetricPoint
from service.orm import utcnow

log = logging.getLogger(__name__)

#: Which status may follow which. ``running -> queued`` is a redelivery after a lost lease.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"queued", "cancelling", "succeeded", "failed", "cancelled"}),
    "cancelling": frozenset({"cancelled", "succeeded", "failed"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
# Core statements on the tables, built once: compiled once, cached, no per-call construction.
_JOBS, _EVENTS = cast(Table, Job.__table__), cast(Table, JobEvent.__table__)
_INSERT_JOB = insert(_JOBS).returning(_JOBS.c.id)
_INSERT_EVENT = insert(_EVENTS)
_EVENT_FOR_STATUS = {
    "queued": "requeued",
    "running": "started",
    "cancelling": "cancel_requested",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}


def record_event(
    session: Session, *, job_id: int, kind: str, reason: str | None = None, data: dict[str, Any] | None = None
) -> JobEvent:
    """Add an event row (not committed): a transition or a notable moment such as ``resumed``."""
    event = JobEvent(job_id=job_id, kind=kind, reason=reason, data=data, at=utcnow())
    session.add(event)
    return event


def transition(
    session: Session,
    *,
    job: Job,
    to_status: str,
    reason: str | None = None,
    event_kind: str | None = None,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Move ``job`` to ``to_status`` if the lifecycle allows it, stamp the times, record the event.

    Does not commit. Raises :class:`InvalidTransitionError` for a move the lifecycle forbids (for
    example anything out of a terminal status). ``event_kind`` overrides the default event name,
    e.g. ``resumed`` for a ``running`` transition that continues from a checkpoint.
    """
    if to_status not in ALLOWED_TRANSITIONS.get(job.status, frozenset()):
        raise InvalidTransitionError(f"job {job.id} cannot go from {job.status} to {to_status}")
    now = utcnow()
    job.status = to_status
    job.status_reason = reason
    if to_status == "queued":
        job.queued_at = now
        job.lease_owner = job.lease_expires_at = None
    elif to_status == "running" and job.started_at is None:
        job.started_at = now
    elif to_status in TERMINAL_STATUSES:
        job.finished_at = now
        job.lease_owner = job.lease_expires_at = None
    kind = event_kind or _EVENT_FOR_STATUS[to_status]
    return record_event(session, job_id=job.id, kind=kind, reason=reason, data=data)


def update_progress(
    session: Session,
    *,
    job: Job,
    epoch: int | None = None,
    step: int | None = None,
    total_epochs: int | None = None,
    total_steps: int | None = None,
    eta_seconds: float | None = None,
) -> None:
    """Set the progress fields that are given (not committed)."""
    values = {"epoch": epoch, "step": step, "total_epochs": total_epochs, "total_steps": total_steps}
    for field, value in values.items():
        if value is not None:
            setattr(job, field, value)
    job.eta_seconds = eta_seconds


def record_metrics(
    session: Session, *, job: Job, step: int, epoch: int | None, values: Mapping[str, float]
) -> None:
    """Append one point per named value at ``step`` and refresh the job's latest metrics."""
    session.add_all(
        MetricPoint(job_id=job.id, step=step, epoch=epoch, name=name, value=float(value))
        for name, value in values.items()
    )
    job.latest_metrics = {**(job.latest_metrics or {}), **{k: float(v) for k, v in values.items()}}


def record_artifact(
    session: Session, *, job_id: int, key: str, kind: str, size_bytes: int | None, checksum: str | None
) -> Artifact:
    """Record a file already written to storage (write first, then record: readers never see half)."""
    artifact = Artifact(job_id=job_id, key=key, kind=kind, size_bytes=size_bytes, checksum=checksum)
    session.add(artifact)
    return artifact


def submit_job(
    session: Session, *, owner_id: int, spec: JobSpec, idempotency_key: str | None, max_attempts: int
) -> tuple[Job, bool]:
    """Insert a queued job and commit; returns ``(job, created)``.

    With an idempotency key, a second submit of the same spec returns the first job
    (``created=False``) and a different spec is a :class:`ConflictError`. The unique constraint on
    ``(owner_id, idempotency_key)`` decides races between concurrent retries.
    """
    spec_json = spec.model_dump(mode="json")
    unstorable = sorted(_unstorable(spec_json))
    if unstorable:  # valid for pydantic, but JSON/jsonb cannot hold them
        raise InvalidRequestError([{"path": path, "message": message} for path, message in unstorable])
    spec_hash = spec.spec_hash()
    now = utcnow()
    values: dict[str, Any] = {
        "owner_id": owner_id,
        "name": spec.name,
        "spec": spec_json,
        "spec_hash": spec_hash,
        "seed": spec.train.seed,
        "status": "queued",
        "attempts": 0,
        "max_attempts": max_attempts,
        "created_at": now,
        "queued_at": now,
        "updated_at": now,
        "idempotency_key": idempotency_key,
        "request_hash": spec_hash if idempotency_key else None,
    }
    try:  # a plain INSERT ... RETURNING: the hot path skips the unit of work
        job_id = session.execute(_INSERT_JOB, values).scalar_one()
    except IntegrityError:
        if idempotency_key is None:
            raise
        return _replay(
            session, owner_id=owner_id, idempotency_key=idempotency_key, request_hash=spec_hash
        ), False
    _insert_event(session, job_id=job_id, kind="created", data={"spec_hash": spec_hash})
    session.commit()
    return Job(id=job_id, **values), True


def _unstorable(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Values JSON or PostgreSQL's jsonb cannot hold: Infinity, NaN and the NUL character."""
    if isinstance(data, float) and not math.isfinite(data):
        yield path, "must be a finite number"
    elif isinstance(data, str) and "\x00" in data:
        yield path, "must not contain the NUL character"
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _unstorable(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _unstorable(value, f"{path}.{index}")


def _insert_event(
    session: Session,
    *,
    job_id: int,
    kind: str,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> None:
    params = {"job_id": job_id, "kind": kind, "reason": reason, "data": data, "at": at or utcnow()}
    session.execute(_INSERT_EVENT, params)


def _replay(session: Session, *, owner_id: int, idempotency_key: str, request_hash: str) -> Job:
    session.rollback()
    existing = session.scalars(
        select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == idempotency_key)
    ).one()
    if existing.request_hash != request_hash:
        raise ConflictError(
            f"Idempotency-Key {idempotency_key!r} was already used for job {existing.id} with another body"
        )
    return existing


def enqueue_job(session: Session, *, job: Job, enqueue: Callable[[int], None]) -> None:
    """Publish the train task for a committed job and record the outcome as an event.

    A failed publish leaves the job queued with an ``enqueue_failed`` event; the reaper re-enqueues
    queued jobs whose message was lost, so the client still gets its job.
    """
    kind, reason = "enqueued", None
    published_at = utcnow()  # stamped before publishing, so it sorts before the worker's "started"
    try:
        enqueue(job.id)
    except Exception as exc:  # any broker error: the job is safe in the database
        log.warning("enqueue of job %s failed: %s", job.id, exc)
        kind, reason = "enqueue_failed", f"{type(exc).__name__}: {exc}"
    try:
        _insert_event(session, job_id=job.id, kind=kind, reason=reason, at=published_at)
        if session.get_bind().dialect.name == "postgresql":
            # Only this informational event rides on the commit: skip the WAL flush wait (a crash
            # may lose the event, never the job, which was committed durably before the publish).
            session.execute(text("SET LOCAL synchronous_commit = off"))
        session.commit()
    except SQLAlchemyError as exc:  # the job exists (and was published): don't fail the request
        log.warning("could not record the enqueue outcome of job %s: %s", job.id, exc)
        session.rollback()


def cancel_job(session: Session, *, job: Job) -> Job:
    """Queued jobs are cancelled at once; running ones go to ``cancelling`` for the worker to stop.

    Cancelling a job that is already cancelling is a no-op; a finished job is a conflict.
    """
    locked = session.scalars(
        select(Job).where(Job.id == job.id).with_for_update().execution_options(populate_existing=True)
    ).one()
    if locked.status == "cancelling":
        return locked
    if locked.status in TERMINAL_STATUSES:
        raise ConflictError(f"job {locked.id} already {locked.status}; nothing to cancel")
    if locked.status == "queued":
        transition(
            session, job=locked, to_status="cancelled", reason="cancelled by the owner before it started"
        )
    else:
        transition(session, job=locked, to_status="cancelling", reason="cancel requested by the owner")
    session.commit()
    return locked
