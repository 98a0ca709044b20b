"""``upgrade head`` on an empty database gives exactly the models' schema; ``downgrade base``
removes it all. On PostgreSQL (a database of its own) and on SQLite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from jobs.migrate import downgrade, upgrade
from jobs.models import Base


@pytest.fixture(params=["pg", "sqlite"])
def empty_database(
    request: pytest.FixtureRequest, tmp_path: Path, new_postgres_database: Callable[[str], str]
) -> Iterator[str]:
    """An empty database URL: a new PostgreSQL database (dropped after) or a new SQLite file."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    yield new_postgres_database("mmkd_migrate")


def test_upgrade_matches_models_and_downgrade_empties(empty_database: str) -> None:
    upgrade(empty_database)
    engine = create_engine(empty_database)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            assert compare_metadata(context, Base.metadata) == []
            assert set(inspect(conn).get_table_names()) >= set(Base.metadata.tables)
        downgrade(empty_database)
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        upgrade(empty_database)  # and back up again
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) >= set(Base.metadata.tables)
    finally:
        engine.dispose()
