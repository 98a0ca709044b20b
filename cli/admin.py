"""Admin commands that act on the database directly: ``mmkd keys``, ``mmkd db``, ``mmkd serve``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import fail

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from service.config import ApiSettings as Settings

keys_app = typer.Typer(no_args_is_help=True, help="Issue, list and revoke API keys.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")


def register(app: typer.Typer) -> None:
    """Add ``mmkd keys ...``, ``mmkd db ...`` and ``mmkd serve`` to ``app``."""
    app.add_typer(keys_app, name="keys")
    app.add_typer(db_app, name="db")
    app.command()(serve)


def settings() -> Settings:
    """The ``MMKD_*`` settings; an invalid value is a one-line error."""
    from pydantic import ValidationError

    from service.config import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(f"MMKD_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        fail(f"invalid setting: {problems}")


def database_url() -> str:
    """``MMKD_DATABASE_URL`` (or the embedded default); an unparsable URL is a one-line error."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = settings().resolved_database_url
    try:
        make_url(url)
    except ArgumentError as exc:
        fail(f"MMKD_DATABASE_URL {url!r}: {exc}")
    return url


def _where(url: str) -> str:
    return url.split("@")[-1]  # never print credentials


@contextmanager
def database_session() -> Iterator[Session]:
    """A session on ``MMKD_DATABASE_URL``; database problems become one-line errors."""
    from sqlalchemy.exc import ArgumentError, OperationalError, ProgrammingError

    from jobs.db import engine_for, session_factory
    from jobs.errors import ServiceError

    url = database_url()
    try:
        with session_factory(engine_for(url))() as session:
            yield session
    except ServiceError as exc:
        fail(exc.detail)
    except (ArgumentError, ImportError) as exc:  # an unknown dialect or a driver not installed
        fail(f"database {_where(url)}: {exc}")
    except (OperationalError, ProgrammingError) as exc:
        fail(f"database {_where(url)}: {str(exc.orig).strip().splitlines()[0]} (run `mmkd db upgrade`?)")


@keys_app.command("create")
def create_key(owner: Annotated[str, typer.Option(help="Owner the key acts for (created if new).")]) -> None:
    """Issue a key; it is printed once and only its hash is stored."""
    from jobs.keys import create_key as issue

    with database_session() as session:
        key, token = issue(session, owner_name=owner)
    typer.echo(token)
    typer.echo(f"key {key.id} ({key.prefix}) for owner {owner!r}; store it now, it is not shown again", err=True)


@keys_app.command("list")
def list_keys(owner: Annotated[str | None, typer.Option(help="Only this owner's keys.")] = None) -> None:
    """List keys (prefix, owner, times); never the secrets."""
    from rich.console import Console
    from rich.table import Table

    from jobs.keys import list_keys as rows

    table = Table("id", "prefix", "owner", "created", "last used", "revoked")
    with database_session() as session:
        for key, key_owner in rows(session, owner_name=owner):
            times = [key.created_at, key.last_used_at, key.revoked_at]
            table.add_row(str(key.id), key.prefix, key_owner.name, *(f"{t:%Y-%m-%d %H:%M}" if t else "" for t in times))
    Console().print(table)


@keys_app.command("revoke")
def revoke_key(key: Annotated[str, typer.Argument(help="Key id or prefix (mmkd_xxxxxxxx).")]) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    from jobs.keys import revoke_key as revoke

    with database_session() as session:
        revoked = revoke(session, key_ref=key)
    typer.echo(f"key {revoked.id} ({revoked.prefix}) revoked at {revoked.revoked_at:%Y-%m-%d %H:%M:%S}")


@db_app.command("upgrade")
def upgrade(revision: Annotated[str, typer.Option(help="Target revision.")] = "head") -> None:
    """Run the migrations on ``MMKD_DATABASE_URL`` (PostgreSQL or SQLite)."""
    from sqlalchemy.exc import ArgumentError, OperationalError

    from jobs.migrate import upgrade as migrate

    url = database_url()
    try:
        migrate(url, revision)
    except (ArgumentError, ImportError) as exc:  # an unknown dialect or a driver not installed
        fail(f"database {_where(url)}: {exc}")
    except OperationalError as exc:
        fail(f"database {_where(url)}: {str(exc.orig).strip().splitlines()[0]}")
    typer.echo(f"database at {revision}: {_where(url)}")


def serve(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
    migrate: Annotated[bool, typer.Option(help="Run `db upgrade` first.")] = True,
) -> None:
    """Run the API with uvicorn."""
    import uvicorn

    os.environ["MMKD_HOST"] = host  # workers re-read settings; create_app checks auth vs. loopback
    from service.config import get_settings

    get_settings.cache_clear()
    current = settings()
    if not current.auth and not current.bound_to_loopback:
        fail(f"MMKD_AUTH=off is allowed only on loopback, not on {host}")
    if migrate:
        upgrade(revision="head")
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker process writes its metrics here; /metrics on any of them sums them all.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mmkd-api-metrics-")
    uvicorn.run("service.main:create_app", factory=True, host=host, port=port, workers=workers)
