"""The reaper: puts jobs back on the queue when their worker died or their message was lost.

- ``running`` / ``cancelling`` jobs whose lease expired (no heartbeat: the worker is gone) go back
  to ``queued`` and are published again while attempts remain; otherwise they fail with the
  reason. A ``cancelling`` job whose worker died is simply ``cancelled``.
- ``queued`` jobs that nobody claimed for ``requeue_after_seconds`` (the publish was lost, or the
  embedded broker handed the message to a worker that died) are published again. A duplicate
  message is harmless: the claim lets only one delivery train.

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

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.jobs.service import record_event, transition
from service.models import Job
from service.orm import utcnow

log = logging.getLogger(__name__)
Enqueue = Callable[[int], None]


@dataclass
class ReapResult:
    """What one pass did, by job id."""

    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    republished: list[int] = field(default_factory=list)


def _locked(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id, with_for_update=True, populate_existing=True)


def _expire_lease(session: Session, job_id: int, now: dt.datetime, result: ReapResult) -> bool:
    """Handle one job whose lease ran out; True when it must be published again."""
    job = _locked(session, job_id)
    if job is None or job.status not in ("running", "cancelling"):
        return False
    if job.lease_expires_at is None or job.lease_expires_at >= now:
        return False
    attempt = f"attempt {job.attempts} of {job.max_attempts}"
    lost = f"worker {job.lease_owner} stopped renewing its lease ({attempt})"
    if job.status == "cancelling":
        transition(session, job=job, to_status="cancelled", reason=f"cancelled; {lost}")
        result.cancelled.append(job_id)
        return False
    if job.attempts >= job.max_attempts:
        transition(session, job=job, to_status="failed", reason=f"worker lost: {lost}; no attempts left")
        job.error = "worker_lost"
        result.failed.append(job_id)
        return False
    transition(session, job=job, to_status="queued", reason=f"re-enqueued: {lost}")
    result.requeued.append(job_id)
    return True


def _republish_stale(session: Session, job_id: int, cutoff: dt.datetime, result: ReapResult) -> bool:
    """Handle one job queued since before ``cutoff``; True when it must be published again."""
    job = _locked(session, job_id)
    if job is None or job.status != "queued" or job.queued_at is None or job.queued_at >= cutoff:
        return False
    if job.attempts >= job.max_attempts:
        transition(session, job=job, to_status="failed", reason=f"no attempts left ({job.attempts})")
        result.failed.append(job_id)
        return False
    job.queued_at = utcnow()
    record_event(session, job_id=job.id, kind="reenqueued", reason="not picked up in time; published again")
    result.republished.append(job_id)
    return True


def reap_once(sessions: sessionmaker[Session], *, enqueue: Enqueue, requeue_after_seconds: float) -> ReapResult:
    """One pass over expired leases and stale queued jobs; publishes after each commit."""
    result = ReapResult()
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=requeue_after_seconds)
    with sessions() as session:
        expired = session.scalars(
            select(Job.id).where(Job.status.in_(("running", "cancelling")), Job.lease_expires_at < now)
        ).all()
        stale = session.scalars(select(Job.id).where(Job.status == "queued", Job.queued_at < cutoff)).all()
    for job_ids, handle in ((expired, _expire_lease), (stale, _republish_stale)):
        for job_id in job_ids:
            with sessions() as session:
                publish = handle(session, job_id, now if handle is _expire_lease else cutoff, result)
                session.commit()
            if publish:
                _publish(enqueue, job_id)
    return result


def _publish(enqueue: Enqueue, job_id: int) -> None:
    try:
        enqueue(job_id)
    except Exception:  # the job stays queued; the next pass publishes it again
        log.exception("reaper: publishing job %s failed", job_id)


def run_reaper(
    sessions: sessionmaker[Session],
    *,
    enqueue: Enqueue,
    interval_seconds: float,
    requeue_after_seconds: float,
    stop: threading.Event,
) -> None:
    """Reap every ``interval_seconds`` until ``stop`` is set; errors are logged, never fatal."""
    while not stop.is_set():
        try:
            result = reap_once(sessions, enqueue=enqueue, requeue_after_seconds=requeue_after_seconds)
            if result.requeued or result.failed or result.cancelled or result.republished:
                log.info("reaper: %s", result)
        except Exception:
            log.exception("reaper pass failed; trying again in %ss", interval_seconds)
        stop.wait(interval_seconds)
