"""Engines and session factories, built lazily from settings (never at import time)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool


def _enable_sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


@lru_cache(maxsize=8)
def engine_for(url: str, pool_size: int = 10, *, max_overflow: int | None = None, pool_timeout: float = 30.0) -> Engine:
    """One engine per URL and pool shape per process. SQLite gets foreign keys, WAL and a busy timeout.

    The pool holds ``pool_size`` connections plus ``max_overflow`` (default: as many again) and
    makes a caller wait at most ``pool_timeout`` seconds for one, then raises
    ``sqlalchemy.exc.TimeoutError`` (the API answers 503).
    """
    overflow = pool_size if max_overflow is None else max_overflow
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        if url.startswith("sqlite:///") and not memory:
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        pool = {} if memory else {"pool_size": pool_size, "max_overflow": overflow, "pool_timeout": pool_timeout}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10}, **pool)
        event.listen(engine, "connect", _enable_sqlite_foreign_keys)
        return engine
    # No pre-ping (a round trip per checkout): after a database restart the first use of each stale
    # connection fails once and the pool discards the rest, which beats a ping on every request.
    return create_engine(url, pool_size=pool_size, max_overflow=overflow, pool_timeout=pool_timeout, pool_recycle=1800)


def unpooled_engine(url: str, *, connect_timeout: int = 3) -> Engine:
    """An engine that opens a connection per use and closes it after: for probes that must never
    wait on (or hold) a request pool's connections, and for processes that fork (nothing pooled is
    inherited by a child)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, poolclass=NullPool, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _enable_sqlite_foreign_keys)
        return engine
    return create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": connect_timeout})


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (responses are built after it)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def autocommit_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on DBAPI autocommit: each statement commits alone, with no BEGIN/COMMIT round trips.

    For reads and single-statement writes that need no transaction around them.
    """
    return sessionmaker(bind=engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
