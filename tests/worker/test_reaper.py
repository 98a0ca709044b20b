"""The reaper on SQLite and PostgreSQL: expired leases and stale queued jobs."""

from __future__ import annotations

import datetime as dt
import threading

from jobs.models import Job
from jobs.orm import utcnow
from jobs.reaper import reap_once, run_reaper


def _ago(seconds: float) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=seconds)


def _running(make_job, **fields) -> int:
    values = {"status": "running", "attempts": 1, "lease_owner": "dead", "lease_expires_at": _ago(5)}
    return make_job(**{**values, **fields})


def test_expired_leases_are_requeued_failed_or_cancelled(sessions, make_job) -> None:
    requeue = _running(make_job)
    spent = _running(make_job, attempts=3)
    cancelling = _running(make_job, status="cancelling")
    alive = _running(make_job, lease_expires_at=utcnow() + dt.timedelta(seconds=60))
    published: list[int] = []
    result = reap_once(sessions, enqueue=published.append, requeue_after_seconds=600)
    assert (result.requeued, result.failed, result.cancelled) == ([requeue], [spent], [cancelling])
    assert published == [requeue]
    with sessions() as session:
        status = {job.id: (job.status, job.lease_owner) for job in session.query(Job)}
        reason = session.get(Job, spent).status_reason
    assert status[requeue] == ("queued", None)
    assert status[spent][0] == "failed" and "no attempts left" in reason and "dead" in reason
    assert status[cancelling][0] == "cancelled"
    assert status[alive] == ("running", "dead")
    assert reap_once(sessions, enqueue=published.append, requeue_after_seconds=600).requeued == []


def test_stale_queued_jobs_are_published_again(sessions, make_job) -> None:
    stale = make_job(queued_at=_ago(120))
    fresh = make_job()
    published: list[int] = []
    result = reap_once(sessions, enqueue=published.append, requeue_after_seconds=60)
    assert result.republished == published == [stale]
    assert fresh not in published
    assert reap_once(sessions, enqueue=published.append, requeue_after_seconds=60).republished == []


def test_publish_failure_is_survived(sessions, make_job) -> None:
    job_id = _running(make_job)

    def broken(_: int) -> None:
        raise ConnectionError("broker down")

    assert reap_once(sessions, enqueue=broken, requeue_after_seconds=600).requeued == [job_id]
    with sessions() as session:
        assert session.get(Job, job_id).status == "queued"  # the stale-queued rule publishes it later


def test_run_reaper_loops_until_stopped(sessions, make_job) -> None:
    job_id = _running(make_job)
    published: list[int] = []
    stop = threading.Event()

    def enqueue(found: int) -> None:
        published.append(found)
        stop.set()

    thread = threading.Thread(
        target=run_reaper,
        args=(sessions,),
        kwargs={"enqueue": enqueue, "interval_seconds": 0.05, "requeue_after_seconds": 600, "stop": stop},
    )
    thread.start()
    thread.join(5)
    assert not thread.is_alive() and published == [job_id]
