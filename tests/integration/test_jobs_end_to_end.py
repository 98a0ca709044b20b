"""Jobs end to end through the SDK, the API, Redis, real Celery workers, PostgreSQL and S3 (moto)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from integration_helpers import DIVERGING, LONG, TINY, events, job_row, publish_again, running_past
from sqlalchemy import select

from jobs.models import Artifact


@pytest.fixture(scope="module")
def worker(stack):
    """One long-lived worker (the Celery process itself: signals reach its whole pool)."""
    process = stack.start_worker("worker-main")
    yield process
    process.stop()


def test_submit_succeeds_and_the_downloaded_student_predicts(stack, worker, tmp_path: Path) -> None:
    from core.engine.export import predict_file

    with stack.client() as client:
        job = client.wait(client.submit(TINY).id, timeout=120)
        assert set(job.result) >= {"student", "teacher", "auxiliary"}
        artifacts = client.artifacts(job.id)
        assert {a.kind for a in artifacts} == {"student", "summary", "metrics", "report", "log"}
        assert all(a.url.startswith(stack.moto.endpoint_url) and "Signature" in a.url for a in artifacts)
        student = tmp_path / "student"
        student.mkdir()
        for artifact in artifacts:
            if artifact.kind == "student":
                client.download(job.id, artifact, student)
    data = Path(__file__).parents[2] / "core" / "data" / "builtin" / "basic_motions.npz"
    predictions = predict_file(student, data)
    assert predictions["prediction"].shape == (80,)
    assert [e.kind for e in events(stack, job.id)] == ["created", "enqueued", "started", "succeeded"]


def test_a_probe_job_reports_the_probe_and_exports_no_student(stack, worker) -> None:
    import httpx

    probe = {**TINY, "name": "probe", "kind": "probe", "method": {"name": "logit_kd", "teacher_epochs": 3}}
    with stack.client() as client:
        job = client.wait(client.submit(probe).id, timeout=120)
        assert {a.kind for a in client.artifacts(job.id)} == {"summary", "log"}
        summary = next(a for a in client.artifacts(job.id) if a.kind == "summary")
        stored = httpx.get(summary.url).json()
    result = job.result
    assert result["kind"] == "probe" and result["teacher_epochs"] == 3 and list(result["sets"]) == ["accelerometer"]
    assert 0.0 <= result["weighted_r2"] <= 1.0 and result["verdict"]
    assert stored == {**result, "data": stored["data"]} and stored["data"]["sha256"] == result["data"]["sha256"]
    assert [e.kind for e in events(stack, job.id)] == ["created", "enqueued", "started", "succeeded"]


def test_non_finite_loss_fails_with_the_step_and_is_not_retried(stack, worker) -> None:
    with stack.client() as client:
        job_id = client.submit(DIVERGING).id
    job = stack.wait_for(lambda: job_row(stack, job_id).status == "failed" and job_row(stack, job_id), what="failed")
    assert (job.error, job.attempts) == ("non_finite_loss", 1)
    assert "non-finite loss at step" in job.status_reason


def test_cancel_running_job(stack, worker) -> None:
    with stack.client() as client:
        job_id = client.submit(LONG).id
        stack.wait_for(lambda: running_past(stack, job_id, 12), what="training past a checkpoint")
        assert client.cancel(job_id).status == "cancelling"
        job = stack.wait_for(lambda: job_row(stack, job_id).status == "cancelled" and job_row(stack, job_id))
    assert job.step < job.total_steps and job.last_checkpoint_key
    assert [e.kind for e in events(stack, job_id)][-2:] == ["cancel_requested", "cancelled"]
    with stack.sessions() as session:
        assert [a.kind for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))] == ["log"]


def test_cancel_queued_job_never_trains(stack, worker) -> None:
    worker.signal(signal.SIGSTOP)  # nobody consumes while we cancel
    try:
        with stack.client() as client:
            job_id = client.submit(TINY).id
            assert client.cancel(job_id).status == "cancelled"
    finally:
        worker.signal(signal.SIGCONT)
    publish_again(stack, job_id)  # a late redelivery must not train it either
    skipped = f"job {job_id} is not queued"
    stack.wait_for(lambda: worker.log.read_text().count(skipped) == 2, what="both deliveries skipped")
    job = job_row(stack, job_id)
    assert (job.status, job.attempts, job.started_at) == ("cancelled", 0, None)


def test_a_job_past_its_max_minutes_fails_as_timed_out(stack, worker) -> None:
    endless = {**LONG, "name": "endless", "train": {**LONG["train"], "epochs": 2000, "max_minutes": 0.5}}
    with stack.client() as client:
        job_id = client.submit(endless).id
    job = stack.wait_for(lambda: (j := job_row(stack, job_id)).status == "failed" and j, what="timed out")
    assert (job.error, job.attempts) == ("timed_out", 1)
    assert job.status_reason.startswith(f"timed out: ran past train.max_minutes=0.5 at step {job.step}")
    assert job.last_checkpoint_key and job.status_reason.endswith(f"last checkpoint kept: {job.last_checkpoint_key}")
