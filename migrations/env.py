"""Alembic environment. Configured in code by ``jobs.migrate`` (no alembic.ini needed): the
database URL comes from the config's ``sqlalchemy.url`` or, failing that, from MMKD settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from jobs.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from settings import get_common_settings as get_settings

    return get_settings().resolved_database_url


def run_offline() -> None:
    """Emit SQL without a database connection."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run against a live connection (SQLite gets batch mode for ALTERs)."""
    connectable = config.attributes.get("connection") or create_engine(_url(), poolclass=pool.NullPool)
    if hasattr(connectable, "connect"):
        with connectable.connect() as connection:
            _run(connection)
    else:
        _run(connectable)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
