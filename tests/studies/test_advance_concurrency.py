"""Advances of one study racing on PostgreSQL, each on its own connection (the API, workers and
reapers do this): the study's row lock makes them take turns, so together they ask exactly the
trials the budget and the parallelism allow, each once, and train the finalists once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from jobs.keys import get_or_create_owner
from jobs.migrate import upgrade
from jobs.models import Job
from studies import service
from studies.spec import StudySpec

STUDY: dict[str, Any] = {
    "name": "race",
    "base": {
        "name": "kd",
        "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["kar"]},
        "method": {"name": "logit_kd"},
    },
    "space": [{"path": "method.kd_weight", "type": "float", "low": 0.25, "high": 8, "log": True}],
    "trials": 6,
    "parallelism": 3,
    "seeds": 2,
}


@pytest.fixture
def database(new_postgres_database: Callable[[str], str]) -> Iterator[tuple[str, sessionmaker[Session]]]:
    url = new_postgres_database("mmkd_race")
    upgrade(url)
    engine = create_engine(url, pool_size=8)
    yield url, sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


def race(url: str, sessions: sessionmaker[Session], study_id: int, callers: int = 6) -> list[int]:
    """``callers`` advances at once, each on its own connection; every job id they created."""
    created: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(callers)

    def advance() -> None:
        try:
            barrier.wait()
            with sessions() as session:
                created.extend(service.advance(session, study_id=study_id, database_url=url, max_attempts=3))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=advance) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return created


def finish_queued(sessions: sessionmaker[Session], study_id: int) -> None:
    """Play the workers: every queued job of the study succeeds with a validation accuracy."""
    with sessions() as session:
        session.execute(
            update(Job)
            .where(Job.study_id == study_id, Job.status == "queued")
            .values(status="succeeded", result={"validation": {"student": {"accuracy": 0.5}}})
        )
        session.commit()


def test_racing_advances_ask_each_trial_once_within_the_budget_and_parallelism(
    database: tuple[str, sessionmaker[Session]],
) -> None:
    url, sessions = database
    with sessions() as session:
        owner = get_or_create_owner(session, name="racer")
        session.commit()
        study, _ = service.create_study(
            session, owner_id=owner.id, spec=StudySpec.model_validate(STUDY), idempotency_key=None
        )
    first = race(url, sessions, study.id)
    assert len(first) == 6  # three trials of two seeds, whoever got there first
    finish_queued(sessions, study.id)
    second = race(url, sessions, study.id)
    assert len(second) == 6 and not set(first) & set(second)  # the other three trials, once each
    finish_queued(sessions, study.id)
    finalists = race(url, sessions, study.id)
    assert len(finalists) == 2  # the winner on both seeds, once
    with sessions() as session:
        rows = session.execute(
            select(Job.trial_number, Job.seed).where(Job.study_id == study.id).order_by(Job.id)
        ).all()
    seeds = (0, 1)
    assert sorted((t, s) for t, s in rows if t is not None) == [(t, s) for t in range(6) for s in seeds]
    assert sorted(s for t, s in rows if t is None) == list(seeds)
    assert race(url, sessions, study.id) == []  # nothing more to ask
