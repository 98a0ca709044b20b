"""Helpers shared by the worker tests (a plain module: test files cannot import conftest)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from core.spec import JobSpec
from jobs.keys import get_or_create_owner
from jobs.lifecycle import submit_job

#: A job of a few seconds on CPU.
TINY = {
    "name": "tiny",
    "dataset": {"name": "basic_motions", "primary": ["accelerometer"], "auxiliary": ["gyroscope"]},
    "model": {"hidden_dim": 16, "repr_dim": 8},
    "method": {"name": "paper"},
    "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
}


def submit(sessions: sessionmaker[Session], spec: dict) -> int:
    """Submit ``spec`` as the owner ``local``, as the API does; returns the job id."""
    with sessions() as session:
        owner = get_or_create_owner(session, name="local")
        session.commit()
        job, _ = submit_job(
            session, owner_id=owner.id, spec=JobSpec.model_validate(spec), idempotency_key=None, max_attempts=3
        )
        return job.id
