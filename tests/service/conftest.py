"""Fixtures for the API tests.

``api`` is a FastAPI TestClient on a fresh app. On PostgreSQL (the default ``backend``) every
request of the test runs inside one outer transaction that is rolled back afterwards; on SQLite
each test gets its own copy of a migrated database file. Modules that must pass on both backends
parametrize ``backend`` indirectly.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from api_helpers import Api, make_settings
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from jobs.db import engine_for
from jobs.migrate import upgrade
from service.main import create_app
from storage.s3 import S3Store
from storage.store import open_store


@pytest.fixture(scope="session")
def pg_database(postgres_url: str) -> str:
    """The session's PostgreSQL database, migrated to head."""
    upgrade(postgres_url)
    return postgres_url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that tests copy."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``pg`` unless the test parametrizes it (indirectly) with ``sqlite``."""
    return str(getattr(request, "param", "pg"))


@pytest.fixture
def api(backend: str, pg_database: str, sqlite_template: Path, redis_url: str, tmp_path: Path) -> Iterator[Api]:
    """A TestClient whose database changes vanish after the test."""
    if backend == "sqlite":
        db_file = tmp_path / "mmkd.db"
        shutil.copy(sqlite_template, db_file)
        shutil.copy(sqlite_template.with_name("template-optuna.db"), tmp_path / "mmkd-optuna.db")  # the studies'
        settings = make_settings(f"sqlite:///{db_file}", redis_url, tmp_path / "artifacts")
        app = create_app(settings)
        session = app.state.session_factory()
        with TestClient(app) as client:
            yield Api(client=client, app=app, session=session)
        session.close()
        engine_for(settings.resolved_database_url).dispose()
        return
    settings = make_settings(pg_database, redis_url, tmp_path / "artifacts")
    app = create_app(settings)
    connection = engine_for(pg_database).connect()
    outer = connection.begin()

    def factory() -> Session:
        return Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)

    def outside_savepoints() -> Session:  # stands in for autocommit: statements join the outer transaction
        return Session(bind=connection, join_transaction_mode="rollback_only", expire_on_commit=False)

    app.state.session_factory = factory
    app.state.autocommit_session_factory = outside_savepoints
    session = factory()
    with TestClient(app) as client:
        yield Api(client=client, app=app, session=session)
    session.close()
    outer.rollback()
    connection.close()


@pytest.fixture
def committed_pg(pg_database: str) -> Iterator[Session]:
    """A plain session on the session database for tests that need real commits (concurrency)."""
    engine = create_engine(pg_database)
    with Session(engine, expire_on_commit=False) as session:
        yield session
    engine.dispose()


@pytest.fixture
def store(api: Api, moto_server: Any) -> S3Store:
    """The app's store, switched to a fresh bucket on moto (presigned uploads need S3)."""
    bucket = f"datasets-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_server.endpoint_url).create_bucket(Bucket=bucket)
    s3 = open_store(f"s3://{bucket}/mmkd", endpoint_url=moto_server.endpoint_url, max_attempts=2)
    assert isinstance(s3, S3Store)
    api.app.state.store = s3
    return s3
