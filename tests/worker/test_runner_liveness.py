"""A deliberately stuck step and a tiny time limit, through the whole runner in-process (SQLite, a
local store): the job fails as ``stalled`` / ``timed_out`` in bounded time, keeps its last
checkpoint, and the stuck attempt writes nothing after the failure."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from worker_helpers import TINY, submit

from jobs.models import Job, JobEvent, MetricPoint
from worker import runner
from worker.config import get_worker_settings

#: A dozen steps, a checkpoint every second step.
STEPPED = {**TINY, "train": {**TINY["train"], "epochs": 4}, "checkpoint": {"every_epochs": None, "every_steps": 2}}


@pytest.fixture
def fast_liveness(embedded: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> sessionmaker[Session]:
    """A 2 s stall limit, a 5 s lease and quick beats; every step's points reach the database."""
    clocks = {
        "MMKD_STALL_SECONDS": "2",
        "MMKD_LEASE_SECONDS": "5",
        "MMKD_HEARTBEAT_SECONDS": "0.1",
        "MMKD_METRICS_FLUSH_SECONDS": "0.001",
    }
    for name, value in clocks.items():
        monkeypatch.setenv(name, value)
    get_worker_settings.cache_clear()
    return embedded


def _snapshot(sessions: sessionmaker[Session], job_id: int) -> tuple:
    """Everything the attempt could still write: the job row, its metric points and events."""
    with sessions() as session:
        job = session.get(Job, job_id)
        points = session.scalar(select(func.count()).where(MetricPoint.job_id == job_id))
        events = session.scalar(select(func.count()).where(JobEvent.job_id == job_id))
        return (
            job.status,
            job.error,
            job.status_reason,
            job.step,
            job.updated_at,
            job.last_checkpoint_key,
            points,
            events,
        )


def _checkpoints(home: Path, job_id: int) -> list[str]:
    return sorted(path.name for path in (home / "artifacts" / f"jobs/{job_id}/checkpoints").glob("*.pt"))


def test_a_stuck_step_fails_as_stalled_keeps_its_checkpoint_and_writes_nothing_after(
    fast_liveness: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.engine import trainer

    real_step = trainer.train_step
    release = threading.Event()  # the heartbeat's "end the stuck attempt", instead of ending pytest
    at_give_up: list[tuple] = []

    def stuck_at_the_sixth_step(run, batch, epoch):
        if run.state.step == 5:
            release.wait(60)
        return real_step(run, batch, epoch)

    def end_stuck_attempt() -> None:
        at_give_up.append(_snapshot(fast_liveness, job_id))
        at_give_up.append(_checkpoints(tmp_path, job_id))
        release.set()  # wake the stuck step: it must find its lease gone and stop without writing

    monkeypatch.setattr(trainer, "train_step", stuck_at_the_sixth_step)
    job_id = submit(fast_liveness, STEPPED)
    started = time.monotonic()
    assert runner.run_job(job_id, end_stuck_attempt=end_stuck_attempt) == "lease_lost"
    assert time.monotonic() - started < 30
    status, error, reason, step, *_ = at_give_up[0]
    assert (status, error, step) == ("failed", "stalled", 5)
    assert re.match(r"stalled: no training progress for \d+ s \(limit MMKD_STALL_SECONDS=2\) after step 5;", reason)
    assert reason.endswith(f"; last checkpoint kept: jobs/{job_id}/checkpoints/step-4.pt")
    assert at_give_up[1] == ["step-2.pt", "step-4.pt"]
    # The woken attempt trained step 6 but recorded nothing, and did not checkpoint (or prune) at step 6.
    assert _snapshot(fast_liveness, job_id) == at_give_up[0]
    assert _checkpoints(tmp_path, job_id) == ["step-2.pt", "step-4.pt"]
    with fast_liveness() as session:
        kinds = [e.kind for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
        assert session.get(Job, job_id).lease_owner is None
    assert kinds == ["created", "started", "failed"]  # not retried: a deterministic hang would hang again


def test_a_job_past_its_max_minutes_fails_as_timed_out_at_a_step_boundary(
    fast_liveness: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.engine import trainer

    real_step = trainer.train_step

    def slow_step(run, batch, epoch):
        time.sleep(0.05)  # slow, never stuck: the stall limit is not what ends this job
        return real_step(run, batch, epoch)

    monkeypatch.setattr(trainer, "train_step", slow_step)
    monkeypatch.setenv("MMKD_STALL_SECONDS", "6")  # a busy machine's pause is not what this test is about
    get_worker_settings.cache_clear()
    endless = {**STEPPED, "train": {**STEPPED["train"], "epochs": 1000, "max_minutes": 0.1}}
    job_id = submit(fast_liveness, endless)
    started = time.monotonic()
    assert runner.run_job(job_id, end_stuck_attempt=lambda: pytest.fail("the loop stopped itself")) == "failed"
    assert time.monotonic() - started < 30
    status, error, reason, step, _, checkpoint, *_ = _snapshot(fast_liveness, job_id)
    assert (status, error) == ("failed", "timed_out") and step > 0
    assert reason.startswith(f"timed out: ran past train.max_minutes=0.1 at step {step}; last checkpoint kept: ")
    assert checkpoint and reason.endswith(checkpoint) and checkpoint.rsplit("/", 1)[1] in _checkpoints(tmp_path, job_id)
