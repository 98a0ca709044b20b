"""Failure mapping, recording outcomes under a lease, and the success report."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.errors import DataError, NonFiniteLossError, Stalled, StorageError, TimedOut, TrainingCancelled
from core.metrics import from_jsonl, series, to_jsonl, train_points, validation_points
from core.spec import JobSpec
from jobs.leases import claim
from jobs.models import Job
from worker import outcomes
from worker.report import result_table, write_report


def _classify(error: BaseException, attempt: int = 1) -> outcomes.Outcome:
    return outcomes.classify(error, attempt=attempt, max_attempts=3)


def test_deterministic_failures_are_not_retried() -> None:
    nan = _classify(NonFiniteLossError(17, {"total": float("nan")}))
    assert (nan.status, nan.kind) == ("failed", "non_finite_loss") and "step 17" in nan.reason
    data = _classify(DataError("s3://b/data.npz", "array 'label' has 3 dims"))
    assert (data.status, data.kind) == ("failed", "invalid_data") and "data.npz" in data.reason
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({"name": "x"})
    invalid = _classify(caught.value)
    assert invalid.kind == "invalid_spec" and "dataset" in invalid.reason
    oom = _classify(MemoryError("cannot allocate"))
    assert (oom.status, oom.kind) == ("failed", "out_of_memory") and "batch_size" in oom.reason
    assert _classify(RuntimeError("boom")).reason == "internal error: RuntimeError: boom"
    for error in (TimedOut(5, "at step 3"), Stalled(700, 600, "after step 3")):
        ending = _classify(error)
        assert (ending.status, ending.kind, ending.reason) == ("failed", error.kind, str(error))


def test_storage_errors_retry_then_fail() -> None:
    assert _classify(StorageError("S3 down"), attempt=1).status == "queued"
    last = _classify(StorageError("S3 down"), attempt=3)
    assert (last.status, last.kind) == ("failed", "storage_unreachable")
    assert "storage unreachable after retries" in last.reason


def test_cancel_maps_to_cancelled() -> None:
    assert _classify(TrainingCancelled(5)) == outcomes.Outcome(
        "cancelled", "cancelled", "cancelled by the owner at step 5"
    )


def test_record_respects_lease_and_cancelling(sessions, make_job) -> None:
    job_id = make_job()
    with sessions() as session:
        lease = claim(session, job_id=job_id, owner="w1", lease_seconds=30)
        session.get(Job, job_id).status = "cancelling"
        session.commit()
    assert outcomes.record(sessions, lease, _classify(StorageError("x"))) == "cancelled"
    with sessions() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.error, job.lease_owner) == ("cancelled", None, None)
        assert job.finished_at is not None
    assert outcomes.record(sessions, lease, _classify(RuntimeError("late"))) == "lease_lost"


def test_record_failure_and_retry(sessions, make_job) -> None:
    failing, retrying = make_job(), make_job()
    with sessions() as session:
        fail_lease = claim(session, job_id=failing, owner="w1", lease_seconds=30)
        retry_lease = claim(session, job_id=retrying, owner="w1", lease_seconds=30)
    assert outcomes.record(sessions, fail_lease, _classify(NonFiniteLossError(3, {"total": 1e40}))) == "failed"
    assert outcomes.record(sessions, retry_lease, _classify(StorageError("S3 down"))) == "queued"
    with sessions() as session:
        failed, queued = session.get(Job, failing), session.get(Job, retrying)
        assert (failed.status, failed.error) == ("failed", "non_finite_loss")
        assert "step 3" in failed.status_reason
        assert (queued.status, queued.attempts, queued.lease_owner) == ("queued", 1, None)


SUMMARY = {
    "name": "tiny",
    "method": "paper",
    "dataset": "mfeat",
    "seed": 0,
    "student": {"accuracy": 0.9, "macro_f1": 0.88},
    "teacher": {"accuracy": 0.95, "macro_f1": 0.94},
    "auxiliary": {"accuracy": 0.8},
    "steps": 40,
    "epochs": 4,
    "resumed_from_step": 20,
    "seconds": 3.2,
}


def test_report_table_and_curves(tmp_path: Path) -> None:
    table = result_table(SUMMARY).splitlines()
    assert table[0] == "| network | accuracy | macro_f1 |"
    assert table[2] == "| student | 0.9000 | 0.8800 |"
    assert table[4] == "| auxiliary | 0.8000 |  |"
    points = [
        p for s in range(1, 41) for p in train_points(step=s, epoch=s // 10, losses={"total": 1 / s, "task": 0.5})
    ]
    points += [
        p
        for s in (10, 20, 30, 40)
        for p in validation_points(step=s, epoch=s // 10, metrics={"student/accuracy": s / 50})
    ]
    assert from_jsonl(to_jsonl(points)) == points
    curves = series(points)
    assert set(curves) == {"train/total", "train/task", "val/student/accuracy"}
    assert curves["val/student/accuracy"][-1] == (40, 0.8)
    folder = write_report(tmp_path, SUMMARY, curves, job_id=7)
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (folder / "report.md").read_text()
    assert "| student | 0.9000 | 0.8800 |" in text and "resumed from step: 20" in text
