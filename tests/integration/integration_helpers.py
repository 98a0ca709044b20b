"""Specs and small helpers shared by the integration tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from jobs.models import Job, JobEvent

TINY: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "basic_motions", "primary": ["accelerometer"], "auxiliary": ["gyroscope"]},
    "model": {"hidden_dim": 16, "repr_dim": 8},
    "method": {"name": "paper"},
    "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
}
#: Long enough to interrupt: a few hundred small steps, a checkpoint every 10.
LONG: dict[str, Any] = {
    "name": "long",
    "dataset": {"name": "mfeat", "primary": ["fou", "zer"], "auxiliary": ["kar"]},
    "model": {"hidden_dim": 16, "repr_dim": 8},
    "method": {"name": "paper"},
    "train": {"epochs": 8, "batch_size": 64, "device": "cpu"},
    "checkpoint": {"every_epochs": None, "every_steps": 10, "keep_last": 2},
}
#: Plain SGD at lr 10 without clipping: the paper objective's loss overflows at step 4 from seed 3
#: (whether lr 10 diverges depends on the draws; most seeds settle instead).
DIVERGING: dict[str, Any] = {
    **TINY,
    "name": "diverging",
    "train": {**TINY["train"], "lr": 10.0, "optimizer": "sgd", "grad_clip": None, "seed": 3},
}


def job_row(stack: Any, job_id: int) -> Job:
    """The job as the database has it now."""
    with stack.sessions() as session:
        return session.get(Job, job_id)


def events(stack: Any, job_id: int) -> list[JobEvent]:
    """The job's events in order."""
    with stack.sessions() as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def running_past(stack: Any, job_id: int, step: int) -> Job | None:
    """The job once it is running at or beyond ``step`` with a checkpoint stored; else None."""
    job = job_row(stack, job_id)
    if job.status == "running" and job.last_checkpoint_key and (job.step or 0) >= step:
        return job
    return None


def publish_again(stack: Any, job_id: int) -> None:
    """Deliver the train task a second time, as a broker redelivery would."""
    from celery import Celery

    with Celery("redeliver", broker=stack.env["MMKD_BROKER_URL"], set_as_current=False) as app:
        app.send_task("mmkd.train", args=[job_id], queue="gpu")
