"""Celery tasks. Each is thin: it takes ids only and hands over to plain functions. The train task's
request class (``worker.dispatch``) skips, in the main process, messages whose job cannot start."""

from __future__ import annotations

from jobs.publish import TRAIN_TASK
from worker.celery_app import app


@app.task(name=TRAIN_TASK, ignore_result=True, Request="worker.dispatch:TrainRequest")
def train_job(job_id: int) -> str:
    """Claim, train and finish one job; returns what happened (for the worker log)."""
    from worker.runner import run_job  # torch loads here, in the worker child, not at import

    return run_job(int(job_id))
