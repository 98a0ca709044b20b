"""Database fixtures for the worker's unit tests: the ORM schema on SQLite and on PostgreSQL.

PostgreSQL tests get a schema of their own inside the session's database, so they never meet the
tables other test modules create there.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import engine_for
from jobs.migrate import upgrade
from jobs.models import Base, Job, Owner
from jobs.orm import utcnow
from worker.config import get_worker_settings


@contextlib.contextmanager
def _postgres_engine(url: str) -> Iterator[Engine]:
    schema = f"worker_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A sessionmaker on an empty schema built from the ORM models."""
    if request.param == "sqlite":
        engines = contextlib.nullcontext(engine_for(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    else:
        engines = _postgres_engine(request.getfixturevalue("postgres_url"))
    with engines as engine:
        Base.metadata.create_all(engine)
        yield sessionmaker(bind=engine, expire_on_commit=False)
        engine.dispose()


SPEC = {
    "name": "tiny",
    "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["kar"]},
    "method": {"name": "student_only"},
}


@pytest.fixture
def make_job(sessions: sessionmaker[Session]) -> Callable[..., int]:
    """Insert a job (queued unless told otherwise) and return its id."""

    def make(**fields: object) -> int:
        with sessions() as session:
            owner = session.query(Owner).filter_by(name="tester").one_or_none()
            if owner is None:
                owner = Owner(name="tester")
                session.add(owner)
                session.flush()
            values = {"status": "queued", "attempts": 0, "max_attempts": 3, "queued_at": utcnow(), **fields}
            job = Job(owner_id=owner.id, name="tiny", spec=SPEC, spec_hash="0" * 64, seed=0, **values)
            session.add(job)
            session.commit()
            return job.id

    return make


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
