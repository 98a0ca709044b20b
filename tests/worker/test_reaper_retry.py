"""A failed publish is published again on the reaper's next pass once the broker answers, without
waiting ``requeue_after_seconds``; while the broker is down a pass tries once and writes nothing."""

from __future__ import annotations

import datetime as dt

from jobs.lifecycle import record_event
from jobs.models import JobEvent
from jobs.orm import utcnow
from jobs.reaper import reap_once


def _failed_publish(sessions, make_job) -> int:
    job_id = make_job()  # queued just now: far from stale
    with sessions() as session:
        record_event(session, job_id=job_id, kind="created")
        record_event(session, job_id=job_id, kind="enqueue_failed", reason="ConnectionError: broker down")
        session.commit()
    return job_id


def _kinds(sessions, job_id: int) -> list[str]:
    with sessions() as session:
        events = session.query(JobEvent).filter_by(job_id=job_id).order_by(JobEvent.at, JobEvent.id)
        return [event.kind for event in events]


def test_failed_publishes_are_retried_once_the_broker_answers(sessions, make_job) -> None:
    first, second = _failed_publish(sessions, make_job), _failed_publish(sessions, make_job)
    tries: list[int] = []

    def broker_down(job_id: int) -> None:
        tries.append(job_id)
        raise ConnectionError("broker down")

    still_down = reap_once(sessions, enqueue=broker_down, requeue_after_seconds=600)
    assert still_down.retried == [] and len(tries) == 1  # one timeout per pass, not one per job
    assert _kinds(sessions, first) == _kinds(sessions, second) == ["created", "enqueue_failed"]

    published: list[int] = []
    back = reap_once(sessions, enqueue=published.append, requeue_after_seconds=600)
    assert sorted(back.retried) == sorted(published) == [first, second]
    assert _kinds(sessions, first) == ["created", "enqueue_failed", "enqueued"]
    assert reap_once(sessions, enqueue=published.append, requeue_after_seconds=600).retried == []
    assert len(published) == 2


def test_a_failed_republish_is_recorded_for_the_next_pass(sessions, make_job) -> None:
    stale_job = make_job(queued_at=utcnow() - dt.timedelta(hours=1))

    def broker_down(job_id: int) -> None:
        raise ConnectionError("broker down")

    assert reap_once(sessions, enqueue=broker_down, requeue_after_seconds=60).republished == [stale_job]
    assert _kinds(sessions, stale_job)[-1] == "enqueue_failed"
    published: list[int] = []
    assert reap_once(sessions, enqueue=published.append, requeue_after_seconds=60).retried == [stale_job]
    assert published == [stale_job]
