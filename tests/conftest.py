"""Fixtures for the real services the tests talk to: PostgreSQL, Redis and moto's S3 server.

PostgreSQL and Redis are the configured servers (``MMKD_TEST_PG_ADMIN_URL``, ``MMKD_TEST_REDIS_URL``)
when they answer, else throwaway ones this session starts and stops (``throwaway_services``;
``MMKD_TEST_SERVICES=own`` forces them). Each test session gets its own freshly created PostgreSQL
databases, and every Redis database number it uses is claimed first (``redis_claims``: atomically,
on the server itself), so concurrent test runs on one machine never see each other's rows or queues.
"""

from __future__ import annotations

import contextlib
import os
import uuid

# One compute thread per test process and the workers it starts (the Makefile sets it for `make test`;
# this covers a plain `pytest`): oversubscribed OpenMP threads spin and halve a shared machine's speed.
os.environ.setdefault("OMP_NUM_THREADS", "1")
from collections.abc import Callable, Iterator

import pytest
import throwaway_services
from live_servers import ApiServer, MotoServer
from redis_claims import DatabaseClaims

PG_ADMIN_URL = os.environ.get("MMKD_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_BASE_URL = os.environ.get("MMKD_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which PostgreSQL and Redis the session used."""
    for line in throwaway_services.SERVICES_USED:
        terminalreporter.write_line(f"services: {line}")


def _or_fail(service: Callable[[str], contextlib.AbstractContextManager[str]], configured: str) -> Iterator[str]:
    try:
        with service(configured) as url:
            yield url
    except throwaway_services.MissingServer as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """The admin URL of the PostgreSQL server in use (configured, or throwaway for this session)."""
    yield from _or_fail(throwaway_services.postgres_admin_url, PG_ADMIN_URL)


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    """The base URL (no database number) of the Redis server in use (configured, or throwaway)."""
    yield from _or_fail(throwaway_services.redis_base_url, REDIS_BASE_URL)


@pytest.fixture(scope="session")
def new_postgres_database(pg_admin_url: str) -> Iterator[Callable[[str], str]]:
    """Factory: ``new_postgres_database(prefix)`` creates an empty database and returns its URL.

    Every database it made is dropped when the test session ends.
    """
    from sqlalchemy import create_engine, text

    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    base = pg_admin_url.rsplit("/", 1)[0]
    created: list[str] = []

    def create(prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return f"{base}/{name}"

    try:
        yield create
    finally:
        with admin.connect() as conn:
            for name in created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url(new_postgres_database: Callable[[str], str]) -> str:
    """A fresh, empty PostgreSQL database for this test session; dropped afterwards."""
    return new_postgres_database("mmkd_test")


@pytest.fixture(scope="session")
def redis_databases(redis_base_url: str) -> Iterator[DatabaseClaims]:
    """Hands out Redis database numbers no other session holds: ``with redis_databases.database() as url``."""
    claims = DatabaseClaims(redis_base_url)
    try:
        yield claims
    finally:
        claims.close()


@pytest.fixture(scope="session")
def redis_url(redis_databases: DatabaseClaims) -> Iterator[str]:
    """The session's own Redis database number (claimed), flushed before and after the session."""
    with redis_databases.database() as url:
        yield url


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A real S3 HTTP endpoint (moto server mode) for boto3; test credentials in the environment."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = MotoServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def api_server(postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A live API server (uvicorn, one worker) on a free loopback port for SDK and HTTP tests."""
    server = ApiServer(postgres_url, redis_url, tmp_path_factory.mktemp("api-home"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
