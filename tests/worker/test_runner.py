"""The job runner in-process on the embedded settings (SQLite, local store): success, duplicate
delivery, non-finite loss. The integration tests repeat these through Celery, PostgreSQL and S3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from core.spec import JobSpec
from jobs.keys import get_or_create_owner
from jobs.lifecycle import submit_job
from jobs.migrate import upgrade
from jobs.models import Artifact, Job, JobEvent
from worker import runner
from worker.config import get_worker_settings

TINY = {
    "name": "tiny",
    "dataset": {"name": "basic_motions", "primary": ["accelerometer"], "auxiliary": ["gyroscope"]},
    "model": {"hidden_dim": 16, "repr_dim": 8},
    "method": {"name": "paper"},
    "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
}
DIVERGING = {**TINY, "train": {**TINY["train"], "lr": 10.0, "optimizer": "sgd", "grad_clip": None}}


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[sessionmaker[Session]]:
    """Embedded settings in a temporary home, with a migrated SQLite database."""
    monkeypatch.setenv("MMKD_HOME", str(tmp_path))
    get_worker_settings.cache_clear()
    upgrade(get_worker_settings().resolved_database_url)
    engine = create_engine(get_worker_settings().resolved_database_url)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()
    get_worker_settings.cache_clear()


def _submit(sessions: sessionmaker[Session], spec: dict) -> int:
    with sessions() as session:
        owner = get_or_create_owner(session, name="local")
        session.commit()
        job, _ = submit_job(
            session, owner_id=owner.id, spec=JobSpec.model_validate(spec), idempotency_key=None, max_attempts=3
        )
        return job.id


def test_success_publishes_artifacts_and_result(embedded: sessionmaker[Session], tmp_path: Path) -> None:
    job_id = _submit(embedded, TINY)
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
    job_id = _submit(embedded, DIVERGING)
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
    job_id = _submit(embedded, spec)
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
        job_id = _submit(embedded, spec)
        assert runner.run_job(job_id) == "failed"
        with embedded() as session:
            job = session.get(Job, job_id)
        assert (job.error, job.attempts) == ("invalid_data", 1)
        reasons.append(job.status_reason.removeprefix(uri))
    assert len(set(reasons)) == 1 and "MMKD_DATA_ALLOW" in reasons[0]
