"""Liveness: the lease is renewed only while training makes progress; the heartbeat fails a stalled
or timed-out attempt itself (keeping its checkpoints) and the attempt writes nothing afterwards."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select
from tests_support import wait_until

from core.errors import Stalled, TimedOut
from jobs.leases import Heartbeat, LeaseLost, Liveness, claim
from jobs.models import Job, MetricPoint
from worker.tracking import DatabaseTracker, LeasedCheckpoints


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_liveness_stalls_without_progress_but_not_inside_a_busy_stretch() -> None:
    clock = Clock()
    liveness = Liveness(stall_seconds=10, clock=clock)
    clock.now += 9
    assert liveness.verdict() is None
    liveness.advanced("step 3")
    clock.now += 9.5
    assert liveness.verdict() is None
    clock.now += 1
    stalled = liveness.verdict()
    assert isinstance(stalled, Stalled) and stalled.kind == "stalled"
    assert str(stalled) == "stalled: no training progress for 10 s (limit MMKD_STALL_SECONDS=10) after step 3"
    with liveness.busy("checkpoint at step 4"):
        clock.now += 100
        assert liveness.verdict() is None and liveness.where() == "during checkpoint at step 4"
    assert liveness.verdict() is None  # the stretch's end restarts the stall clock
    clock.now += 11
    assert isinstance(liveness.verdict(), Stalled)


def test_a_busy_stretch_counts_as_progress_only_up_to_its_own_limit() -> None:
    clock = Clock()
    liveness = Liveness(stall_seconds=10, busy_seconds=300, clock=clock)
    with liveness.busy("uploading the results"), liveness.busy("student.pt2"):
        clock.now += 300
        assert liveness.verdict() is None
        clock.now += 1
        stalled = liveness.verdict()
    assert isinstance(stalled, Stalled)
    assert str(stalled) == ("stalled: no training progress for 301 s (limit MMKD_BUSY_SECONDS=300) during student.pt2")


def test_liveness_deadline_counts_from_the_claim_and_the_heartbeat_allows_a_stall_of_grace() -> None:
    clock = Clock()
    liveness = Liveness(stall_seconds=10, clock=clock)
    assert not liveness.past_deadline()
    liveness.limit(0.5)  # 30 s
    with liveness.busy("publishing the results"):
        clock.now += 31
        assert liveness.past_deadline() and liveness.verdict() is None  # the loop may still stop itself
        clock.now += 10
        timed_out = liveness.verdict()
    assert isinstance(timed_out, TimedOut) and timed_out.kind == "timed_out"
    assert str(timed_out) == "timed out: ran past train.max_minutes=0.5 during publishing the results"


def _claimed(sessions, make_job, **fields: object):
    job_id = make_job(**fields)
    with sessions() as session:
        return claim(session, job_id=job_id, owner="w1", lease_seconds=30)


def _job(sessions, job_id: int) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def test_a_stalled_attempt_is_failed_by_its_heartbeat_and_renewed_no_more(sessions, make_job) -> None:
    lease = _claimed(sessions, make_job)
    with sessions() as session:
        session.get(Job, lease.job_id).last_checkpoint_key = "jobs/1/checkpoints/step-4.pt"
        session.commit()
    liveness = Liveness(stall_seconds=0.3)
    given_up = threading.Event()
    beat = Heartbeat(sessions, lease, lease_seconds=30, interval=0.05, liveness=liveness, on_give_up=given_up.set)
    with beat:
        liveness.advanced("step 5")
        assert given_up.wait(10) and beat.lost.is_set()
    job = _job(sessions, lease.job_id)
    assert (job.status, job.error, job.lease_owner) == ("failed", "stalled", None)
    assert "after step 5" in job.status_reason
    assert job.status_reason.endswith("; last checkpoint kept: jobs/1/checkpoints/step-4.pt")
    assert job.last_checkpoint_key == "jobs/1/checkpoints/step-4.pt"


def test_progress_keeps_the_lease_renewed(sessions, make_job) -> None:
    lease = _claimed(sessions, make_job)
    liveness = Liveness(stall_seconds=0.3)
    given_up = threading.Event()
    with Heartbeat(sessions, lease, lease_seconds=30, interval=0.05, liveness=liveness, on_give_up=given_up.set):
        first = _job(sessions, lease.job_id).lease_expires_at

        def renewed_while_stepping() -> bool:
            liveness.advanced("step")
            return _job(sessions, lease.job_id).lease_expires_at > first

        wait_until(renewed_while_stepping, what="a renewal")
        for step in range(20):  # twice the stall limit, with progress all along
            liveness.advanced(f"step {step}")
            assert not given_up.wait(0.03)
    assert _job(sessions, lease.job_id).status == "running"


def test_a_hung_stretch_past_the_deadline_is_timed_out_by_the_heartbeat(sessions, make_job) -> None:
    lease = _claimed(sessions, make_job)
    liveness = Liveness(stall_seconds=0.2)
    liveness.limit(0.2 / 60)
    given_up = threading.Event()
    beat = Heartbeat(sessions, lease, lease_seconds=30, interval=0.05, liveness=liveness, on_give_up=given_up.set)
    with beat, liveness.busy("publishing the results"):
        assert given_up.wait(10)
    job = _job(sessions, lease.job_id)
    assert (job.status, job.error) == ("failed", "timed_out")
    assert "during publishing the results; last checkpoint kept: none yet" in job.status_reason


def test_the_heartbeat_does_not_fail_a_job_it_no_longer_holds(sessions, make_job) -> None:
    lease = _claimed(sessions, make_job)
    with sessions() as session:
        session.get(Job, lease.job_id).lease_owner = "w2"
        session.commit()
    given_up = threading.Event()
    liveness = Liveness(stall_seconds=0.05)
    with Heartbeat(sessions, lease, lease_seconds=30, interval=0.05, liveness=liveness, on_give_up=given_up.set):
        assert given_up.wait(10)  # the stuck attempt is still ended
    job = _job(sessions, lease.job_id)
    assert (job.status, job.lease_owner, job.error) == ("running", "w2", None)


def _tracker(sessions, lease, liveness: Liveness, lost: threading.Event | None = None) -> DatabaseTracker:
    return DatabaseTracker(
        sessions,
        job_id=lease.job_id,
        lease_owner=lease.owner,
        lease_lost=lost or threading.Event(),
        liveness=liveness,
        flush_seconds=3600,
    )


def test_the_tracker_times_out_at_a_step_boundary_after_writing_its_points(sessions, make_job) -> None:
    lease = _claimed(sessions, make_job)
    clock = Clock()
    liveness = Liveness(stall_seconds=60, clock=clock)
    liveness.limit(1)
    tracker = _tracker(sessions, lease, liveness)
    tracker.on_start(total_epochs=1, steps_per_epoch=10, start_step=0)
    tracker.on_step(epoch=0, step=1, losses={"total": 1.0})
    tracker.on_checkpoint(epoch=0, step=1, key="jobs/9/checkpoints/step-1.pt")
    tracker.on_step(epoch=0, step=2, losses={"total": 0.5})
    assert not tracker.should_stop()
    clock.now += 61
    with pytest.raises(TimedOut, match=r"max_minutes=1 at step 2; last checkpoint kept: jobs/9/checkpoints/step-1.pt"):
        tracker.should_stop()
    with sessions() as session:
        assert sorted(session.scalars(select(MetricPoint.step))) == [1, 2]


def test_after_the_lease_is_lost_nothing_is_written(sessions, make_job, tmp_path) -> None:
    lease = _claimed(sessions, make_job)
    lost = threading.Event()
    tracker = _tracker(sessions, lease, Liveness(stall_seconds=60), lost)
    tracker.on_start(total_epochs=1, steps_per_epoch=10, start_step=0)
    tracker.on_step(epoch=0, step=1, losses={"total": 1.0})
    lost.set()  # as the heartbeat does before failing the job
    tracker.on_step(epoch=0, step=2, losses={"total": 0.5})
    tracker.on_epoch(epoch=1, step=2, metrics={"student/accuracy": 0.5})
    tracker.on_checkpoint(epoch=1, step=2, key="k")
    assert tracker.should_stop()
    job = _job(sessions, lease.job_id)
    assert (job.step, job.last_checkpoint_key) == (0, None)
    with sessions() as session:
        assert session.scalars(select(MetricPoint)).all() == []

    saved: list[int] = []

    class Store:
        def save(self, step: int, payload: bytes) -> str:
            saved.append(step)
            return f"step-{step}"

        def load_latest(self) -> None:
            return None

    with pytest.raises(LeaseLost):
        LeasedCheckpoints(Store(), lease_lost=lost).save(2, b"x")
    assert LeasedCheckpoints(Store(), lease_lost=threading.Event()).save(3, b"x") == "step-3"
    assert saved == [3]
