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


def test_the_study_storage_lives_apart_and_goes_with_the_schema(empty_database: str) -> None:
    """Optuna's tables (and its own alembic_version) sit in the schema ``optuna`` or a sibling SQLite file:
    ``upgrade`` creates them beside ours, ``downgrade base`` removes them."""
    from migrations.study_storage import study_storage_url

    upgrade(empty_database)
    storage_url = study_storage_url(empty_database)
    ours, theirs = create_engine(empty_database), create_engine(storage_url)
    try:
        with ours.connect() as conn:
            assert "trials" not in inspect(conn).get_table_names()  # Optuna's are not among ours
        with theirs.connect() as conn:
            assert {"studies", "trials", "trial_intermediate_values", "version_info"} <= set(
                inspect(conn).get_table_names()
            )
        theirs.dispose()
        downgrade(empty_database)
        if empty_database.startswith("sqlite"):
            assert not Path(storage_url.removeprefix("sqlite:///")).exists()
        else:
            with ours.connect() as conn:
                assert "optuna" not in inspect(conn).get_schema_names()
    finally:
        ours.dispose()
        theirs.dispose()


def test_the_study_storage_url_keeps_the_server_and_its_options() -> None:
    from migrations.study_storage import study_storage_url

    url = "postgresql+psycopg://me:p%40ss@db:5432/mmkd?options=-cstatement_timeout%3D5000"
    assert study_storage_url(url) == (
        "postgresql+psycopg://me:p%40ss@db:5432/mmkd?options=-cstatement_timeout%3D5000+-csearch_path%3Doptuna"
    )
    assert study_storage_url("sqlite:////srv/mmkd/mmkd.db") == "sqlite:////srv/mmkd/mmkd-optuna.db"
    with pytest.raises(ValueError, match="SQLite database file"):
        study_storage_url("sqlite://")
