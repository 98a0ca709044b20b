"""Training warnings in the worker: a ``warning`` job event with the numbers (once per job, also across
attempts), the typed result's ``warnings`` and the report's list."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from worker_helpers import submit

from jobs.leases import Liveness, claim
from jobs.models import Job, JobEvent
from service.jobs.results import JobResult
from worker import runner
from worker.tracking import DatabaseTracker

#: mi_joint with a strong I(T;S) term after a warm-up: the teacher falls from ~0.95 to ~0.82 (seconds on CPU).
WEAK_TEACHER: dict[str, Any] = {
    "name": "weak",
    "dataset": {"name": "mfeat", "primary": ["fou", "mor"], "auxiliary": ["kar"]},
    "model": {"hidden_dim": 32, "repr_dim": 8, "dropout": 0.1},
    "method": {"name": "mi_joint", "alpha": 100.0, "warmup_epochs": 3},
    "train": {"epochs": 12, "batch_size": 32, "lr": 0.01, "seed": 0, "device": "cpu"},
}
NUMBERS = {"network": "teacher", "metric": "accuracy", "best": 0.95, "best_epoch": 3, "value": 0.8, "epoch": 8}


def warning_events(sessions: sessionmaker[Session], job_id: int) -> list[JobEvent]:
    with sessions() as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "warning")))


def test_a_weak_teacher_job_gets_a_warning_event_a_typed_result_and_a_report_line(
    embedded: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = submit(embedded, WEAK_TEACHER)
    assert runner.run_job(job_id) == "succeeded"
    [event] = warning_events(embedded, job_id)
    assert event.data is not None and event.data["warning"] == "weak_teacher"
    assert event.data["network"] == "teacher" and event.data["best"] - event.data["value"] > event.data["threshold"]
    assert event.reason is not None and event.reason.startswith("weak teacher: ") and "\n" not in event.reason
    with embedded() as session:
        result = session.get(Job, job_id).result  # type: ignore[union-attr]
    [typed] = TypeAdapter(JobResult).validate_python(result).warnings
    assert (typed.kind, typed.message, typed.epoch) == ("weak_teacher", event.reason, event.data["epoch"])
    report = (tmp_path / "artifacts" / f"jobs/{job_id}/report/report.md").read_text()
    assert f"Warnings:\n- {event.reason}" in report


def test_a_warning_is_recorded_once_per_job_and_not_after_the_lease_is_lost(sessions, make_job) -> None:
    job_id = make_job()
    with sessions() as session:
        claim(session, job_id=job_id, owner="w1", lease_seconds=30)
    lost = threading.Event()

    def tracker() -> DatabaseTracker:
        return DatabaseTracker(
            sessions, job_id=job_id, lease_owner="w1", lease_lost=lost, liveness=Liveness(stall_seconds=60)
        )

    first = tracker()
    first.on_warning(kind="weak_teacher", message="weak teacher: 0.80", data={**NUMBERS, "threshold": 0.05})
    # A resumed attempt replays the evaluations after its checkpoint and may see the same warning again.
    again = tracker()
    again.on_warning(kind="weak_teacher", message="weak teacher: 0.79", data={**NUMBERS, "threshold": 0.05})
    again.on_warning(kind="student_regressed", message="student regressed", data={**NUMBERS, "threshold": 0.02})
    events = warning_events(sessions, job_id)
    assert [(e.reason, e.data["warning"] if e.data else None) for e in events] == [
        ("weak teacher: 0.80", "weak_teacher"),
        ("student regressed", "student_regressed"),
    ]
    assert events[0].data == {"warning": "weak_teacher", **NUMBERS, "threshold": 0.05}
    lost.set()
    tracker().on_warning(kind="other", message="lost", data={})
    assert len(warning_events(sessions, job_id)) == 2
