"""The study storage: where Optuna keeps its studies and trials, beside the service's own tables.

Optuna's tables (``studies``, ``trials``...) and its own Alembic history (``alembic_version``)
would collide with the service's, so they live apart: in the PostgreSQL schema ``optuna`` of the
same database (the URL carries ``search_path``, so Optuna's engine and its migrations both land
there), or in a SQLite file beside the service's (``mmkd.db`` -> ``mmkd-optuna.db``). ``mmkd db
upgrade`` creates the schema and tables and upgrades them after an Optuna release; the API and the
workers only open what exists.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, make_url, pool, text

#: The PostgreSQL schema of Optuna's tables.
SCHEMA = "optuna"


def study_storage_url(database_url: str) -> str:
    """The study storage's SQLAlchemy URL for the service database at ``database_url``."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:"):
            raise ValueError("studies need a SQLite database file, not an in-memory database")
        path = Path(database)
        return url.set(database=str(path.with_name(f"{path.stem}-optuna{path.suffix or '.db'}"))).render_as_string(
            hide_password=False
        )
    options = " ".join(filter(None, [str(url.query.get("options") or ""), f"-csearch_path={SCHEMA}"]))
    return url.update_query_dict({"options": options}).render_as_string(hide_password=False)


def upgrade(database_url: str) -> None:
    """Create the study storage (schema and Optuna's tables) or bring it to this Optuna's version."""
    from optuna.storages import RDBStorage

    if make_url(database_url).get_backend_name() == "postgresql":
        _execute(database_url, f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    storage = RDBStorage(study_storage_url(database_url), skip_compatibility_check=True)
    try:
        if storage.get_current_version() != storage.get_head_version():
            storage.upgrade()
    finally:
        storage.engine.dispose()


def downgrade(database_url: str) -> None:
    """Drop the study storage (``mmkd db downgrade base``): the schema, or the SQLite file."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        Path(make_url(study_storage_url(database_url)).database or "").unlink(missing_ok=True)
        return
    _execute(database_url, f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def _execute(database_url: str, statement: str) -> None:
    """Run one statement on the server in its own committed transaction and connection."""
    engine = create_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()
