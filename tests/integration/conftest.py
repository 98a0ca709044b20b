"""The end-to-end tests' stack (``tests/stack.py``) on a PostgreSQL database and a Redis database
number of their own, with moto's S3 server."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis_claims import DatabaseClaims
from stack import Stack


@pytest.fixture(scope="session")
def integration_database(new_postgres_database: Callable[[str], str]) -> str:
    """A PostgreSQL database of its own (the reaper must not see other tests' jobs)."""
    return new_postgres_database("mmkd_it")


@pytest.fixture(scope="session")
def integration_broker(redis_databases: DatabaseClaims) -> Iterator[str]:
    """A Redis database number of its own (claimed), so API tests' messages never reach us."""
    with redis_databases.database() as url:
        yield url


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    """More ``MMKD_*`` settings for the module's stack (a module overrides this fixture)."""
    return {}


@pytest.fixture(scope="module")
def stack(
    integration_database: str, integration_broker: str, moto_server: Any, tmp_path_factory, stack_env: dict[str, str]
) -> Iterator[Stack]:
    """The API on PostgreSQL + Redis + S3; tests start their own workers."""
    bucket = f"mmkd-it-{uuid.uuid4().hex[:8]}"
    home = tmp_path_factory.mktemp("stack")
    built = Stack(home, integration_database, integration_broker, moto_server, bucket, **stack_env)
    built.ensure_bucket()
    built.start_api()
    try:
        yield built
    finally:
        built.close()
