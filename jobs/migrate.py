"""Run Alembic migrations from code (``mmkd db upgrade``, tests); the scripts live in ``migrations/``.
The study storage (Optuna's own tables, ``migrations.study_storage``) is upgraded with them."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from migrations import study_storage


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at ``migrations/`` and ``database_url`` (no alembic.ini)."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database up to ``revision``."""
    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), revision)
    if revision == "head":
        study_storage.upgrade(database_url)


def downgrade(database_url: str, revision: str = "base") -> None:
    """Migrate the database down to ``revision``."""
    command.downgrade(alembic_config(database_url), revision)
    if revision == "base":
        study_storage.downgrade(database_url)
