"""Engines and session factories, built lazily from settings (never at import time)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def _enable_sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


@lru_cache(maxsize=8)
def engine_for(url: str, pool_size: int = 10) -> Engine:
    """One engine per URL per process. SQLite gets foreign keys, WAL and a busy timeout."""
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _enable_sqlite_foreign_keys)
        return engine
    # No pre-ping (a round trip per checkout): after a database restart the first use of each stale
    # connection fails once and the pool discards the rest, which beats a ping on every request.
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (responses are built after it)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def autocommit_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on DBAPI autocommit: each statement commits alone, with no BEGIN/COMMIT round trips.

    For reads and single-statement writes that need no transaction around them.
    """
    return sessionmaker(bind=engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
