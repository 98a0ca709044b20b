"""A stored spec the strict models refuse (a row written before issue 12, say ``epochs: true``) ends
its job ``invalid_spec`` on the first attempt, naming the field; it is never trained or retried."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from worker_helpers import TINY, submit

from jobs.models import Job
from worker import runner


def test_a_stored_spec_that_is_no_longer_valid_fails_invalid_spec(embedded: sessionmaker[Session]) -> None:
    job_id = submit(embedded, TINY)
    with embedded() as session:
        stored = {**TINY, "train": {**TINY["train"], "epochs": True, "amp": 1}}
        session.execute(update(Job).where(Job.id == job_id).values(spec=stored))
        session.commit()
    assert runner.run_job(job_id) == "failed"
    with embedded() as session:
        job = session.get(Job, job_id)
    assert job is not None
    assert (job.status, job.error, job.attempts, job.step) == ("failed", "invalid_spec", 1, None)
    assert job.status_reason == (
        "invalid spec: train.epochs: Input should be a valid integer; train.amp: Input should be a valid boolean"
    )
