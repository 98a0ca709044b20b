"""Claiming, renewing and losing leases, and the database tracker, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select
from tests_support import wait_until

from jobs.leases import Heartbeat, Liveness, claim, renew
from jobs.models import Job, JobEvent, MetricPoint
from worker.tracking import DatabaseTracker


def _job(sessions, job_id: int) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def _events(sessions, job_id: int) -> list[tuple[str, object]]:
    with sessions() as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [(event.kind, event.data) for event in rows]


def test_claim_moves_queued_to_running_once(sessions, make_job) -> None:
    job_id = make_job()
    with sessions() as session:
        lease = claim(session, job_id=job_id, owner="w1", lease_seconds=30)
    assert lease is not None and lease.attempt == 1
    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.lease_owner) == ("running", 1, "w1")
    assert job.lease_expires_at is not None and job.started_at is not None
    with sessions() as session:
        assert claim(session, job_id=job_id, owner="w2", lease_seconds=30) is None
    assert _job(sessions, job_id).lease_owner == "w1"
    assert [kind for kind, _ in _events(sessions, job_id)] == ["started"]


def test_concurrent_claims_have_one_winner(sessions, make_job) -> None:
    job_id = make_job()
    barrier = threading.Barrier(4)

    def attempt(owner: str) -> bool:
        barrier.wait()
        with sessions() as session:
            return claim(session, job_id=job_id, owner=owner, lease_seconds=30) is not None

    with ThreadPoolExecutor(4) as pool:
        wins = list(pool.map(attempt, ["a", "b", "c", "d"]))
    assert sum(wins) == 1
    assert _job(sessions, job_id).attempts == 1


def test_no_claim_when_cancelled_or_out_of_attempts(sessions, make_job) -> None:
    cancelled = make_job(status="cancelled")
    spent = make_job(attempts=3, max_attempts=3)
    with sessions() as session:
        assert claim(session, job_id=cancelled, owner="w", lease_seconds=30) is None
        assert claim(session, job_id=spent, owner="w", lease_seconds=30) is None
        assert claim(session, job_id=999_999, owner="w", lease_seconds=30) is None


def test_renew_and_lose_the_lease(sessions, make_job) -> None:
    job_id = make_job()
    with sessions() as session:
        lease = claim(session, job_id=job_id, owner="w1", lease_seconds=1)
        first_expiry = _job(sessions, job_id).lease_expires_at
        assert renew(session, lease=lease, lease_seconds=60)
    assert _job(sessions, job_id).lease_expires_at > first_expiry
    with sessions() as session:
        job = session.get(Job, job_id)
        job.lease_owner = "thief"
        session.commit()
        assert not renew(session, lease=lease, lease_seconds=60)


def _heartbeat(sessions, lease, liveness: Liveness | None = None, on_give_up=lambda: None) -> Heartbeat:
    liveness = liveness or Liveness(stall_seconds=60)
    return Heartbeat(sessions, lease, lease_seconds=30, interval=0.05, liveness=liveness, on_give_up=on_give_up)


def test_heartbeat_renews_and_reports_loss(sessions, make_job) -> None:
    job_id = make_job()
    with sessions() as session:
        lease = claim(session, job_id=job_id, owner="w1", lease_seconds=1)
    with _heartbeat(sessions, lease) as beat:
        job = wait_until(
            lambda: (j := _job(sessions, job_id)).lease_expires_at - j.updated_at > dt.timedelta(seconds=20) and j
        )
        assert not beat.lost.is_set() and job.status == "running"
        with sessions() as session:
            session.get(Job, job_id).lease_owner = "thief"
            session.commit()
        assert beat.lost.wait(2)


def _tracker(
    sessions, job_id: int, lost: threading.Event | None = None, liveness: Liveness | None = None, **kw
) -> DatabaseTracker:
    lost = lost or threading.Event()
    liveness = liveness or Liveness(stall_seconds=60)
    return DatabaseTracker(sessions, job_id=job_id, lease_owner="w1", lease_lost=lost, liveness=liveness, **kw)


def test_tracker_writes_progress_metrics_in_batches(sessions, make_job) -> None:
    job_id = make_job()
    with sessions() as session:
        claim(session, job_id=job_id, owner="w1", lease_seconds=30)
    tracker = _tracker(sessions, job_id, flush_seconds=3600)
    tracker.on_start(total_epochs=2, steps_per_epoch=3, start_step=0)
    for step in range(1, 4):
        tracker.on_step(epoch=0, step=step, losses={"total": 1.0 / step, "task": 0.5})
    with sessions() as session:  # still buffered: nothing written per step
        assert session.scalars(select(MetricPoint)).all() == []
    tracker.on_epoch(epoch=0, step=3, metrics={"student/accuracy": 0.75})
    tracker.on_checkpoint(epoch=0, step=3, key="jobs/1/checkpoints/step-3.pt")
    job = _job(sessions, job_id)
    assert (job.epoch, job.step, job.total_epochs, job.total_steps) == (0, 3, 2, 6)
    assert job.eta_seconds is not None and job.last_checkpoint_key.endswith("step-3.pt")
    assert job.latest_metrics == {"train/total": 1 / 3, "train/task": 0.5, "val/student/accuracy": 0.75}
    with sessions() as session:
        assert len(session.scalars(select(MetricPoint)).all()) == 7


def test_tracker_writes_buffered_points_before_a_busy_stretch(sessions, make_job) -> None:
    """A checkpoint is stored inside a busy stretch: the steps before it are recorded first, so a worker
    killed between storing it and on_checkpoint leaves no gap in the history the resumed run continues."""
    job_id = make_job()
    with sessions() as session:
        claim(session, job_id=job_id, owner="w1", lease_seconds=30)
    tracker = _tracker(sessions, job_id, flush_seconds=3600)
    tracker.on_start(total_epochs=1, steps_per_epoch=2, start_step=0)
    tracker.on_step(epoch=0, step=1, losses={"total": 1.0})
    tracker.on_step(epoch=0, step=2, losses={"total": 0.5})
    with tracker.busy("checkpoint at step 2"), sessions() as session:
        assert sorted(p.step for p in session.scalars(select(MetricPoint))) == [1, 2]


def test_tracker_resume_event_and_stale_points(sessions, make_job) -> None:
    job_id = make_job()
    with sessions() as session:
        claim(session, job_id=job_id, owner="w1", lease_seconds=30)
    tracker = _tracker(sessions, job_id)
    tracker.on_start(total_epochs=2, steps_per_epoch=4, start_step=0)
    for step in range(1, 7):
        tracker.on_step(epoch=step // 4, step=step, losses={"total": 1.0})
    tracker.flush()
    tracker.on_start(total_epochs=2, steps_per_epoch=4, start_step=4)
    assert ("resumed", {"step": 4}) in _events(sessions, job_id)
    with sessions() as session:
        assert sorted(session.scalars(select(MetricPoint.step))) == [1, 2, 3, 4]


def test_should_stop_on_cancelling_and_lost_lease(sessions, make_job) -> None:
    job_id = make_job()
    with sessions() as session:
        claim(session, job_id=job_id, owner="w1", lease_seconds=30)
    tracker = _tracker(sessions, job_id, poll_seconds=0.01)
    assert not tracker.should_stop()
    with sessions() as session:
        session.get(Job, job_id).status = "cancelling"
        session.commit()
    wait_until(tracker.should_stop, what="the cancel seen")

    lost = threading.Event()
    other = _tracker(sessions, make_job(), lost)  # never claimed by w1: writes find no lease
    other.on_start(total_epochs=1, steps_per_epoch=1, start_step=0)
    assert lost.is_set() and other.should_stop()
