"""Job logic: submission with idempotency, cancellation, and the state-transition helpers the worker
and the reaper use. No FastAPI here; functions take a SQLAlchemy session and keyword-only arguments."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, Executable, Table, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.spec import JobSpec
from jobs.errors import ConflictError, InvalidRequestError, InvalidTransitionError
from jobs.limits import check_queued_limit
from jobs.models import Artifact, Job, JobEvent
from jobs.orm import utcnow
from jobs.publish import Publish
from jobs.status import EVENT_FOR_STATUS, JobStatus, sources

log = logging.getLogger(__name__)

# Core statements on the tables, built once: compiled once, cached, no per-call construction.
_JOBS, _EVENTS = cast(Table, Job.__table__), cast(Table, JobEvent.__table__)
_INSERT_EVENT = insert(_EVENTS)
#: ``INSERT ... ON CONFLICT (owner_id, idempotency_key) DO NOTHING RETURNING id``: a second submit
#: with a key gets no row back instead of an error (no NULL key ever conflicts).
_INSERT_JOB: dict[str, Executable] = {
    "postgresql": postgresql.insert(_JOBS)
    .on_conflict_do_nothing(index_elements=["owner_id", "idempotency_key"])
    .returning(_JOBS.c.id),
    "sqlite": sqlite.insert(_JOBS)
    .on_conflict_do_nothing(index_elements=["owner_id", "idempotency_key"])
    .returning(_JOBS.c.id),
}


def record_event(
    session: Session,
    *,
    job_id: int,
    kind: str,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> None:
    """Add an event row (not committed): a notable moment such as ``resumed`` or ``enqueued``, at
    ``at`` (default now). A prebuilt Core INSERT: no unit of work on the hot path."""
    params = {"job_id": job_id, "kind": kind, "reason": reason, "data": data, "at": at or utcnow()}
    session.execute(_INSERT_EVENT, params)


def transition(
    session: Session,
    *,
    job_id: int,
    to: JobStatus | str,
    reason: str | None = None,
    expect: Collection[JobStatus] | None = None,
    lease_owner: str | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    values: Mapping[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> int | None:
    """Move a job to ``to`` by compare-and-set; the one place where a job's status changes.

    One UPDATE matches the job only while its status is one of ``expect`` (default: every status
    the state machine allows ``to`` to follow), it is held by ``lease_owner`` when one is given,
    and ``where`` holds. It stamps the times and lease that go with ``to``, sets ``values``, and
    records the event (with the attempt number). Returns the job's attempt count after the move,
    or None when nothing matched (another writer moved the job first). Does not commit.
    Raises :class:`InvalidTransitionError` for a move the state machine never allows.
    """
    target = JobStatus(to)
    allowed = sources(target)
    expected = allowed if expect is None else frozenset(JobStatus(s) for s in expect)
    if not expected or not expected <= allowed:
        raise InvalidTransitionError(f"no job may go from {sorted(expected - allowed)} to {target}")
    now = utcnow()
    stamp: dict[str, Any] = {"status": target, "status_reason": reason, "updated_at": now}
    if target == JobStatus.QUEUED:
        stamp.update(queued_at=now, lease_owner=None, lease_expires_at=None)
    elif target == JobStatus.RUNNING:
        stamp.update(started_at=func.coalesce(Job.started_at, now))
    elif target.terminal:
        stamp.update(finished_at=now, lease_owner=None, lease_expires_at=None)
    conditions = [Job.id == job_id, Job.status.in_(expected), *where]
    if lease_owner is not None:
        conditions.append(Job.lease_owner == lease_owner)
    attempts = session.execute(
        update(Job)
        .where(*conditions)
        .values({**stamp, **(values or {})})
        .returning(Job.attempts)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if attempts is None:
        return None
    record_event(
        session, job_id=job_id, kind=EVENT_FOR_STATUS[target], reason=reason, data={"attempt": attempts, **(data or {})}
    )
    return int(attempts)


def record_artifact(
    session: Session, *, job_id: int, key: str, kind: str, size_bytes: int | None, checksum: str | None
) -> Artifact:
    """Record a file already written to storage (write first, then record: readers never see half)."""
    artifact = Artifact(job_id=job_id, key=key, kind=kind, size_bytes=size_bytes, checksum=checksum)
    session.add(artifact)
    return artifact


def submit_job(
    session: Session,
    *,
    owner_id: int,
    spec: JobSpec,
    idempotency_key: str | None,
    max_attempts: int,
    max_queued: int | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job and commit; returns ``(job, created)``.

    With an idempotency key, a second submit of the same spec returns the first job
    (``created=False``) and a different spec is a :class:`ConflictError`. The unique constraint on
    ``(owner_id, idempotency_key)`` decides races: the insert does nothing on a conflict (waiting
    only for the first insert's short transaction), and the first job, committed by then, is read
    back. With ``max_queued``, an owner already at that many queued jobs gets a
    ``LimitExceededError`` (429).

    The session's transaction (with whatever the caller read in it) ends here whatever happens:
    committed with the new job, or rolled back right after the replay's read or an error, so a
    request never holds a connection idle in a transaction.
    """
    try:
        job_id, values = insert_job(
            session, owner_id=owner_id, spec=spec, max_attempts=max_attempts, idempotency_key=idempotency_key
        )
        spec_hash = values["spec_hash"]
        if job_id is None:  # the key is taken; read committed shows this next statement the first job
            existing = session.scalars(
                select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == idempotency_key)
            ).one()
            session.expunge(existing)  # keep what was read: a rollback would expire it
            session.rollback()
            return _replayed(existing, idempotency_key=str(idempotency_key), request_hash=spec_hash), False
        if max_queued is not None:
            check_queued_limit(session, owner_id=owner_id, max_queued=max_queued)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return Job(id=job_id, **values), True


def insert_job(
    session: Session,
    *,
    owner_id: int,
    spec: JobSpec,
    max_attempts: int,
    idempotency_key: str | None = None,
    study_id: int | None = None,
    trial_number: int | None = None,
) -> tuple[int | None, dict[str, Any]]:
    """Insert a queued job with its ``created`` event, not committed; returns its id (None when the
    idempotency key is taken) and the row's values. A study's trials pass their study and trial."""
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
        "status": JobStatus.QUEUED,
        "attempts": 0,
        "max_attempts": max_attempts,
        "created_at": now,
        "queued_at": now,
        "updated_at": now,
        "idempotency_key": idempotency_key,
        "request_hash": spec_hash if idempotency_key else None,
        "study_id": study_id,
        "trial_number": trial_number,
    }
    # A plain INSERT ... RETURNING: the hot path skips the unit of work.
    job_id = session.execute(_INSERT_JOB[session.get_bind().dialect.name], values).scalar_one_or_none()
    if job_id is not None:
        record_event(session, job_id=job_id, kind="created", data={"spec_hash": spec_hash})
    return job_id, values


def _replayed(existing: Job, *, idempotency_key: str, request_hash: str) -> Job:
    if existing.request_hash != request_hash:
        raise ConflictError(
            f"Idempotency-Key {idempotency_key!r} was already used for job {existing.id} with another body"
        )
    return existing


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


def enqueue_job(session: Session, *, job: Job, enqueue: Callable[[int], None]) -> None:
    """Publish the train task for a committed job and record the outcome as an event.

    A failed publish leaves the job queued with an ``enqueue_failed`` event; the reaper publishes
    such jobs again on its next pass once the broker answers, so the client still gets its job.
    The event's transaction is committed or rolled back before returning.
    """
    kind, reason = "enqueued", None
    published_at = utcnow()  # stamped before publishing, so it sorts before the worker's "started"
    try:
        enqueue(job.id)
    except Exception as exc:  # any broker error: the job is safe in the database
        log.warning("enqueue of job %s failed: %s", job.id, exc)
        kind, reason = "enqueue_failed", f"{type(exc).__name__}: {exc}"
    try:
        record_event(session, job_id=job.id, kind=kind, reason=reason, at=published_at)
        if session.get_bind().dialect.name == "postgresql":
            # Only this informational event rides on the commit: skip the WAL flush wait (a crash
            # may lose the event, never the job, which was committed durably before the publish).
            session.execute(text("SET LOCAL synchronous_commit = off"))
        session.commit()
    except SQLAlchemyError as exc:  # the job exists (and was published): don't fail the request
        log.warning("could not record the enqueue outcome of job %s: %s", job.id, exc)
        session.rollback()
    except BaseException:
        session.rollback()
        raise


def hold_back(session: Session, *, job_id: int, publish: Publish, delay_seconds: float, reason: str) -> bool:
    """Keep a queued job queued and offer it to the workers again in ``delay_seconds``.

    For a job whose owner is at the running limit: it is not failed, only delayed. ``queued_at``
    is touched (the reaper then sees a fresh publish, not a lost one) and ``status_reason`` says
    why it waits; the delayed message is published after that commit. A failed publish is
    recorded as ``enqueue_failed``, which the reaper retries once the broker answers. Returns
    whether a message was published.
    """
    held = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(queued_at=utcnow(), status_reason=f"waiting: {reason}")
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    session.commit()
    if held is None:
        return False
    try:
        publish(job_id, countdown=delay_seconds)
    except Exception as exc:
        log.warning("holding back job %s: publishing it again failed: %s", job_id, exc)
        record_event(session, job_id=job_id, kind="enqueue_failed", reason=f"{type(exc).__name__}: {exc}")
        session.commit()
        return False
    return True


def cancel_job(session: Session, *, job: Job) -> Job:
    """Queued jobs are cancelled at once; running ones go to ``cancelling`` for the worker to stop.

    Cancelling a job that is already cancelling is a no-op; a finished job is a conflict. Each move
    is a compare-and-set, so a cancel racing a worker's claim or finish takes the status it finds.
    """
    moved = transition(
        session,
        job_id=job.id,
        to=JobStatus.CANCELLED,
        expect={JobStatus.QUEUED},
        reason="cancelled by the owner before it started",
    )
    if moved is None:
        moved = transition(
            session,
            job_id=job.id,
            to=JobStatus.CANCELLING,
            expect={JobStatus.RUNNING},
            reason="cancel requested by the owner",
        )
    session.commit()
    current = session.get(Job, job.id, populate_existing=True)
    session.commit()  # end the read's transaction: the connection goes back to the pool now
    assert current is not None  # jobs are never deleted while their owner exists
    if moved is None and current.status != JobStatus.CANCELLING:
        raise ConflictError(f"job {current.id} already {current.status}; nothing to cancel")
    return current
