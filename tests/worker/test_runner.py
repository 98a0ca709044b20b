"""The job runner in-process on the embedded settings (SQLite, local store): success, duplicate
delivery, non-finite loss. The integration tests repeat these through Celery, PostgreSQL and S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from worker_helpers import TINY, submit

from jobs.models import Artifact, Job, JobEvent
from worker import runner
from worker.config import get_worker_settings

# Seed 3: this seed's SGD at lr 10 overflows at step 4 (divergence at lr 10 depends on the draws).
DIVERGING = {**TINY, "train": {**TINY["train"], "lr": 10.0, "optimizer": "sgd", "grad_clip": None, "seed": 3}}


def test_success_publishes_artifacts_and_result(embedded: sessionmaker[Session], tmp_path: Path) -> None:
    job_id = submit(embedded, TINY)
    assert runner.run_job(job_id) == "succeeded"
    assert runner.run_job(job_id) == "skipped"  # a second delivery does nothing
    with embedded() as session:
        job = session.get(Job, job_id)
        keys = {a.key: a.kind for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        events = [e.kind for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
    assert (job.status, job.attempts, job.lease_owner, job.error) == ("succeeded", 1, None, None)
    assert set(job.result) >= {"student", "teacher", "auxiliary"} and job.step == job.total_steps
    assert events == ["created", "started", "succeeded"]
    prefix = f"jobs/{job_id}/"
    assert keys[prefix + "student/student.pt2"] == "student"
    assert keys[prefix + "summary.json"] == "summary" and keys[prefix + "metrics.jsonl"] == "metrics"
    assert keys[prefix + "report/report.md"] == keys[prefix + "report/curves.png"] == "report"
    artifacts = tmp_path / "artifacts"
    assert json.loads((artifacts / prefix / "summary.json").read_text())["student"] == job.result["student"]
    assert (artifacts / prefix / "checkpoints").is_dir()
    assert not list((tmp_path / "work").rglob("*.pt2"))  # scratch space is cleaned up


def test_non_finite_loss_fails_with_step(embedded: sessionmaker[Session]) -> None:
    job_id = submit(embedded, DIVERGING)
    assert runner.run_job(job_id) == "failed"
    with embedded() as session:
        job = session.get(Job, job_id)
    assert (job.status, job.error, job.attempts) == ("failed", "non_finite_loss", 1)
    assert "non-finite loss at step" in job.status_reason


def test_invalid_data_fails_naming_the_file_and_is_not_retried(
    embedded: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    allowed = tmp_path / "data"
    allowed.mkdir()
    monkeypatch.setenv("MMKD_DATA_ALLOW", f"/nowhere, {allowed}")
    get_worker_settings.cache_clear()
    data = allowed / "broken.npz"
    np.savez(data, cheap=np.zeros((20, 3), np.float32), rich=np.zeros((20, 5), np.float32))  # no labels
    spec = {**TINY, "dataset": {"uri": str(data), "primary": ["cheap"], "auxiliary": ["rich"]}}
    job_id = submit(embedded, spec)
    assert runner.run_job(job_id) == "failed"
    with embedded() as session:
        job = session.get(Job, job_id)
    assert (job.status, job.error, job.attempts) == ("failed", "invalid_data", 1)
    assert str(data) in job.status_reason and "'label' is required" in job.status_reason


def test_worker_reads_no_file_outside_the_allowed_prefixes(
    embedded: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker checks the allow-list again (a spec may reach the database without the API), and its
    refusal reads the same for an existing file, a missing one and a link that escapes the prefix."""
    import numpy as np

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv("MMKD_DATA_ALLOW", str(allowed))
    get_worker_settings.cache_clear()
    secret = tmp_path / "other-owner.npz"
    np.savez(secret, cheap=np.zeros((20, 3), np.float32), rich=np.zeros((20, 5), np.float32), label=np.zeros(20))
    (allowed / "escape.npz").symlink_to(secret)
    reasons = []
    for uri in (
        str(secret),
        str(tmp_path / "missing.npz"),
        str(allowed / "escape.npz"),
        f"{allowed}/../other-owner.npz",
    ):
        spec = {**TINY, "dataset": {"uri": uri, "primary": ["cheap"], "auxiliary": ["rich"]}}
        job_id = submit(embedded, spec)
        assert runner.run_job(job_id) == "failed"
        with embedded() as session:
            job = session.get(Job, job_id)
        assert (job.error, job.attempts) == ("invalid_data", 1)
        reasons.append(job.status_reason.removeprefix(uri))
    assert len(set(reasons)) == 1 and "MMKD_DATA_ALLOW" in reasons[0]


def test_metrics_file_and_report_are_the_database_points_after_a_resume(
    embedded: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 checkpoints at step 6 and writes step 7's points, then storage fails (a retry); attempt
    2 resumes at step 6. metrics.jsonl holds every step once: exactly the database's points."""
    from core.engine import trainer
    from core.errors import StorageError
    from core.metrics import Point, from_jsonl
    from jobs.models import MetricPoint

    monkeypatch.setenv("MMKD_METRICS_FLUSH_SECONDS", "0.001")  # every step reaches the database
    get_worker_settings.cache_clear()
    real_step = trainer.train_step

    def failing_after_seven(run, batch, epoch):
        if run.state.step == 7:
            raise StorageError("S3 unreachable")
        return real_step(run, batch, epoch)

    spec = {**TINY, "train": {**TINY["train"], "epochs": 4}, "checkpoint": {"every_epochs": None, "every_steps": 3}}
    job_id = submit(embedded, spec)
    monkeypatch.setattr(trainer, "train_step", failing_after_seven)
    monkeypatch.setattr(runner, "_publish_retry", lambda settings, job_id: None)
    assert runner.run_job(job_id) == "queued"
    with embedded() as session:
        assert max(session.scalars(select(MetricPoint.step).where(MetricPoint.job_id == job_id))) == 7
    monkeypatch.setattr(trainer, "train_step", real_step)
    assert runner.run_job(job_id) == "succeeded"
    with embedded() as session:
        job = session.get(Job, job_id)
        rows = session.execute(
            select(MetricPoint.step, MetricPoint.epoch, MetricPoint.name, MetricPoint.value)
            .where(MetricPoint.job_id == job_id)
            .order_by(MetricPoint.step, MetricPoint.id)
        ).all()
    assert job.result["resumed_from_step"] == 6
    recorded = from_jsonl((tmp_path / "artifacts" / f"jobs/{job_id}/metrics.jsonl").read_text())
    assert recorded == [Point(*row) for row in rows]
    steps = [point.step for point in recorded if point.name == "train/total"]
    assert steps == list(range(1, job.total_steps + 1))  # no duplicates, no gaps
    assert {point.name for point in recorded if point.step == job.total_steps} >= {
        "train/total",
        "val/student/accuracy",
    }
