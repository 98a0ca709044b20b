"""Jobs end to end through the SDK, the API, Redis, real Celery workers, PostgreSQL and S3 (moto)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from sqlalchemy import select

from service.models import Artifact, Job, JobEvent
from worker.celery_app import app as celery_app

TINY = {
    "name": "tiny",
    "dataset": {"name": "basic_motions", "primary": ["accelerometer"], "auxiliary": ["gyroscope"]},
    "model": {"hidden_dim": 16, "repr_dim": 8},
    "method": {"name": "paper"},
    "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
}
#: Long enough to interrupt: a few hundred small steps, a checkpoint every 10.
LONG = {
    "name": "long",
    "dataset": {"name": "mfeat", "primary": ["fou", "zer"], "auxiliary": ["kar"]},
    "model": {"hidden_dim": 16, "repr_dim": 8},
    "method": {"name": "paper"},
    "train": {"epochs": 16, "batch_size": 64, "device": "cpu"},
    "checkpoint": {"every_epochs": None, "every_steps": 10, "keep_last": 2},
}
DIVERGING = {**TINY, "name": "diverging", "train": {**TINY["train"], "lr": 10.0, "optimizer": "sgd", "grad_clip": None}}


def _job(stack, job_id: int) -> Job:
    with stack.sessions() as session:
        return session.get(Job, job_id)


def _events(stack, job_id: int) -> list[JobEvent]:
    with stack.sessions() as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def _running_past(stack, job_id: int, step: int):
    job = _job(stack, job_id)
    return job.status == "running" and job.last_checkpoint_key and (job.step or 0) >= step and job


def _publish_again(stack, job_id: int) -> None:
    """Deliver the train task a second time, as a broker redelivery would."""
    celery_app.conf.broker_url = stack.env["MMKD_BROKER_URL"]
    celery_app.send_task("mmkd.train", args=[job_id], queue="gpu")


@pytest.fixture(scope="module")
def worker(stack):
    """One long-lived worker with the reaper for the tests that need no special setup."""
    process = stack.start_worker("worker-main", beat=True)
    yield process
    process.stop()


def test_submit_succeeds_and_the_downloaded_student_predicts(stack, worker, tmp_path: Path) -> None:
    from core.engine.export import predict_file

    with stack.client() as client:
        job = client.wait(client.submit(TINY).id, timeout=120, poll_interval=0.5, max_interval=2)
        assert set(job.result) >= {"student", "teacher", "auxiliary"}
        artifacts = client.artifacts(job.id)
        assert {a.kind for a in artifacts} == {"student", "summary", "metrics", "report"}
        assert all(a.url.startswith(stack.moto.endpoint_url) and "Signature" in a.url for a in artifacts)
        student = tmp_path / "student"
        student.mkdir()
        for artifact in artifacts:
            if artifact.kind == "student":
                client.download(job.id, artifact, student)
    data = Path(__file__).parents[2] / "core" / "data" / "builtin" / "basic_motions.npz"
    predictions = predict_file(student, data)
    assert predictions["prediction"].shape == (80,)
    assert [e.kind for e in _events(stack, job.id)] == ["created", "enqueued", "started", "succeeded"]


def test_non_finite_loss_fails_with_the_step_and_is_not_retried(stack, worker) -> None:
    with stack.client() as client:
        job_id = client.submit(DIVERGING).id
    job = stack.wait_for(lambda: _job(stack, job_id).status == "failed" and _job(stack, job_id), what="failed")
    assert (job.error, job.attempts) == ("non_finite_loss", 1)
    assert "non-finite loss at step" in job.status_reason


def test_cancel_running_job(stack, worker) -> None:
    with stack.client() as client:
        job_id = client.submit(LONG).id
        stack.wait_for(lambda: _running_past(stack, job_id, 12), what="training past a checkpoint")
        assert client.cancel(job_id).status == "cancelling"
        job = stack.wait_for(lambda: _job(stack, job_id).status == "cancelled" and _job(stack, job_id))
    assert job.step < job.total_steps and job.last_checkpoint_key
    assert [e.kind for e in _events(stack, job_id)][-2:] == ["cancel_requested", "cancelled"]
    with stack.sessions() as session:
        assert session.scalars(select(Artifact).where(Artifact.job_id == job_id)).all() == []


def test_cancel_queued_job_never_trains(stack, worker) -> None:
    worker.signal(signal.SIGSTOP)  # nobody consumes while we cancel
    try:
        with stack.client() as client:
            job_id = client.submit(TINY).id
            assert client.cancel(job_id).status == "cancelled"
    finally:
        worker.signal(signal.SIGCONT)
    _publish_again(stack, job_id)  # even a late delivery must not train it
    stack.wait_for(lambda: _job(stack, job_id).status == "cancelled", timeout=5)
    job = _job(stack, job_id)
    assert (job.status, job.attempts, job.started_at) == ("cancelled", 0, None)
