"""Helpers shared by the worker tests (a plain module: test files cannot import conftest)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.spec import JobSpec
from jobs.keys import get_or_create_owner
from jobs.lifecycle import submit_job
from jobs.models import Job
from studies import service
from studies.spec import StudySpec
from worker import runner
from worker.config import get_worker_settings

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


def start(sessions: sessionmaker[Session], body: dict[str, Any]) -> int:
    settings = get_worker_settings()
    with sessions() as session:
        owner = get_or_create_owner(session, name="local")
        session.commit()
        study, _ = service.create_study(
            session, owner_id=owner.id, spec=StudySpec.model_validate(body), idempotency_key=None
        )
        service.advance(session, study_id=study.id, database_url=settings.resolved_database_url, max_attempts=3)
        return study.id


def queued(sessions: sessionmaker[Session], study_id: int) -> list[int]:
    with sessions() as session:
        return list(
            session.scalars(select(Job.id).where(Job.study_id == study_id, Job.status == "queued").order_by(Job.id))
        )


def drive(sessions: sessionmaker[Session], study_id: int, limit: int = 12) -> list[tuple[int, str]]:
    """Train the study's queued jobs one by one (each run advances the study) until none is queued."""
    ran = []
    while (waiting := queued(sessions, study_id)) and len(ran) < limit:
        ran.append((waiting[0], runner.run_job(waiting[0])))
    return ran
