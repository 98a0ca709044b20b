"""The reaper: puts jobs back on the queue when their worker died or their message was lost.

- ``running`` / ``cancelling`` jobs whose lease expired (no heartbeat: the worker is gone) go back
  to ``queued`` and are published again while attempts remain; otherwise they fail with the
  reason. A ``cancelling`` job whose worker died is simply ``cancelled``.
- ``queued`` jobs whose last event is ``enqueue_failed`` (the broker was down when the API, a
  worker or the reaper itself published them) are published again on the next pass, as soon as the
  broker answers, not after ``requeue_after_seconds``. While it is still down, the first failure
  ends the attempt for that pass (one timeout per pass, no new events).
- ``queued`` jobs that nobody claimed for ``requeue_after_seconds`` (the publish was lost, or the
  embedded broker handed the message to a worker that died) are published again. A duplicate
  message is harmless: the claim lets only one delivery train.

- running studies are advanced (``advance_studies``, injected: the domain of jobs knows no Optuna),
  so a study whose last trial's worker died before advancing it still moves on.

Where it runs: a loop (:func:`run_reaper`) inside ``mmkd worker --beat`` and inside ``mmkd up``,
not Celery beat: it needs no schedule file and no extra process. Several reapers may run at once
(one per ``--beat`` host); each change is made under a row lock after re-checking the row, so a
job is re-enqueued once per expiry.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from jobs.lifecycle import record_event, transition
from jobs.models import Job, JobEvent
from jobs.orm import utcnow
from jobs.status import ACTIVE, JobStatus

log = logging.getLogger(__name__)
Enqueue = Callable[[int], None]
#: Advances every running study; returns the ids of the studies that changed (``studies.service``).
AdvanceStudies = Callable[[sessionmaker[Session], Enqueue], list[int]]
#: The kind of a job's latest event, correlated to ``jobs.id`` in the query that uses it.
_LAST_EVENT_KIND = (
    select(JobEvent.kind)
    .where(JobEvent.job_id == Job.id)
    .order_by(JobEvent.at.desc(), JobEvent.id.desc())
    .limit(1)
    .scalar_subquery()
)


@dataclass
class ReapResult:
    """What one pass did, by job id."""

    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    republished: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)  # published again after a failed publish
    studies: list[int] = field(default_factory=list)  # studies that got new jobs


def _expire_lease(session: Session, job_id: int, now: dt.datetime, result: ReapResult) -> bool:
    """Handle one job whose lease ran out; True when it must be published again.

    Every move is a compare-and-set on the lease seen here and on its expiry, so a worker that
    renews or finishes in between wins and the reaper changes nothing.
    """
    row = session.execute(select(Job.lease_owner, Job.attempts, Job.max_attempts).where(Job.id == job_id)).one_or_none()
    if row is None or row.lease_owner is None:
        return False
    lost = f"worker {row.lease_owner} stopped renewing its lease (attempt {row.attempts} of {row.max_attempts})"
    expired = [Job.lease_expires_at < now]

    def move(to: JobStatus, expect: JobStatus, where: list[Any], reason: str, error: str | None = None) -> bool:
        values = {"error": error} if error else None
        moved = transition(
            session,
            job_id=job_id,
            to=to,
            expect={expect},
            lease_owner=row.lease_owner,
            where=where,
            reason=reason,
            values=values,
        )
        return moved is not None

    if move(JobStatus.CANCELLED, JobStatus.CANCELLING, expired, f"cancelled; {lost}"):
        result.cancelled.append(job_id)
        return False
    exhausted = [*expired, Job.attempts >= Job.max_attempts]
    if move(JobStatus.FAILED, JobStatus.RUNNING, exhausted, f"worker lost: {lost}; no attempts left", "worker_lost"):
        result.failed.append(job_id)
        return False
    if move(JobStatus.QUEUED, JobStatus.RUNNING, [*expired, Job.attempts < Job.max_attempts], f"re-enqueued: {lost}"):
        result.requeued.append(job_id)
        return True
    return False


def _republish_stale(session: Session, job_id: int, cutoff: dt.datetime, result: ReapResult) -> bool:
    """Handle one job queued since before ``cutoff``; True when it must be published again."""
    stale = [Job.queued_at < cutoff]
    failed = transition(
        session,
        job_id=job_id,
        to=JobStatus.FAILED,
        expect={JobStatus.QUEUED},
        where=[*stale, Job.attempts >= Job.max_attempts],
        reason="no attempts left",
    )
    if failed is not None:
        result.failed.append(job_id)
        return False
    touched = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED, *stale)
        .values(queued_at=utcnow())
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if touched is None:
        return False
    record_event(session, job_id=job_id, kind="reenqueued", reason="not picked up in time; published again")
    result.republished.append(job_id)
    return True


def _retry_failed_publish(sessions: sessionmaker[Session], job_id: int, enqueue: Enqueue, result: ReapResult) -> bool:
    """Publish one job whose last publish failed; False when the broker still refuses.

    Under the job's row lock (another reaper skips it), re-check that it is queued and its last
    event is still ``enqueue_failed``, publish, then record ``enqueued`` (stamped before the publish,
    so it sorts before the worker's ``started``) and touch ``queued_at`` in the same commit.
    """
    with sessions() as session:
        locked = session.scalar(
            select(Job.id)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED, _LAST_EVENT_KIND == "enqueue_failed")
            .with_for_update(skip_locked=True)
        )
        if locked is None:
            return True
        published_at = utcnow()
        try:
            enqueue(job_id)
        except Exception as exc:
            log.warning("reaper: the broker still refuses (job %s): %s", job_id, exc)
            session.rollback()
            return False
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(queued_at=published_at)
            .execution_options(synchronize_session=False)
        )
        reason = "published again after a failed publish"
        record_event(session, job_id=job_id, kind="enqueued", reason=reason, at=published_at)
        session.commit()
    result.retried.append(job_id)
    return True


def reap_once(
    sessions: sessionmaker[Session],
    *,
    enqueue: Enqueue,
    requeue_after_seconds: float,
    advance_studies: AdvanceStudies | None = None,
) -> ReapResult:
    """One pass over failed publishes, expired leases, stale queued jobs and running studies; publishes
    after each commit."""
    result = ReapResult()
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=requeue_after_seconds)
    with sessions() as session:
        failed = session.scalars(
            select(Job.id).where(Job.status == JobStatus.QUEUED, _LAST_EVENT_KIND == "enqueue_failed")
        ).all()
        expired = session.scalars(select(Job.id).where(Job.status.in_(ACTIVE), Job.lease_expires_at < now)).all()
        stale = session.scalars(select(Job.id).where(Job.status == JobStatus.QUEUED, Job.queued_at < cutoff)).all()
    for job_id in failed:
        if not _retry_failed_publish(sessions, job_id, enqueue, result):
            break  # the broker is still down: try again next pass
    for job_ids, handle in ((expired, _expire_lease), (stale, _republish_stale)):
        for job_id in job_ids:
            with sessions() as session:
                publish = handle(session, job_id, now if handle is _expire_lease else cutoff, result)
                session.commit()
            if publish:
                _publish(sessions, enqueue, job_id)
    if advance_studies is not None:
        result.studies = advance_studies(sessions, enqueue)
    return result


def _publish(sessions: sessionmaker[Session], enqueue: Enqueue, job_id: int) -> None:
    try:
        enqueue(job_id)
    except Exception as exc:  # the job stays queued; the next pass that reaches the broker publishes it
        log.exception("reaper: publishing job %s failed", job_id)
        with sessions() as session:
            record_event(session, job_id=job_id, kind="enqueue_failed", reason=f"{type(exc).__name__}: {exc}")
            session.commit()


def run_reaper(
    sessions: sessionmaker[Session],
    *,
    enqueue: Enqueue,
    interval_seconds: float,
    requeue_after_seconds: float,
    stop: threading.Event,
    advance_studies: AdvanceStudies | None = None,
) -> None:
    """Reap every ``interval_seconds`` until ``stop`` is set; errors are logged, never fatal."""
    while not stop.is_set():
        try:
            result = reap_once(
                sessions, enqueue=enqueue, requeue_after_seconds=requeue_after_seconds, advance_studies=advance_studies
            )
            if any(vars(result).values()):
                log.info("reaper: %s", result)
        except Exception:
            log.exception("reaper pass failed; trying again in %ss", interval_seconds)
        stop.wait(interval_seconds)
