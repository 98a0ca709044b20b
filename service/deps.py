"""FastAPI dependencies as ``Annotated`` aliases: a session per request, the calling owner, and the
job named by the path (resolved once; a missing or foreign job is a 404).

Connections are held only while a thread uses them. A dependency that reads in a worker thread
hands its connection back before returning, because the request then waits for another thread
(its handler's), and a connection held across that wait is one the running handlers may need:
with more requests in flight than threads, the pool empties while every thread waits on it.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated

import anyio
from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator
from sqlalchemy.orm import Session

from jobs import keys as keys_service
from jobs import queries
from jobs.errors import UnauthorizedError
from jobs.keys import Principal
from jobs.models import Job
from service.config import ApiSettings

LOCAL_OWNER = "local"
#: Ids and steps are 32-bit integer columns; larger path or query values are a 422, not a 500.
MAX_ID = 2**31 - 1


def _decimal_digits(value: object) -> object:
    """Refuse what pydantic's lax int would read from a query string (``+5``, `` 5``, ``5.0``, ``٥``)."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be decimal digits only (0-9)")
    return value


#: Put after ``Query(...)`` in an ``Annotated`` integer query parameter: decimal digits only.
#: Integer path parameters get the same from the route's ``{name:digits}`` convertor (anything else
#: in that segment matches no route: 404).
DIGITS_ONLY = BeforeValidator(_decimal_digits)
_bearer = HTTPBearer(auto_error=False, description="An API key from `mmkd keys create`.")


async def get_settings_dep(request: Request) -> ApiSettings:
    """The settings the app was created with."""
    settings: ApiSettings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for this request; service functions commit or roll back before they return.

    Opening and closing run on the event loop: neither does I/O, except rolling back a transaction
    an error left open. That rollback runs in a thread of its own, never in the handlers' thread
    pool, where it would queue behind handlers waiting for the very connection it holds (as
    FastAPI does for the exit of a sync dependency).
    """
    session = request.app.state.session_factory()
    try:
        yield session
    finally:
        if session.in_transaction():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))
        else:
            session.close()


async def get_autocommit_session(request: Request) -> AsyncIterator[Session]:
    """A session whose statements commit one by one: one round trip per read, no BEGIN/ROLLBACK,
    and nothing to roll back when it closes (closing does no I/O)."""
    session = request.app.state.autocommit_session_factory()
    try:
        yield session
    finally:
        session.close()


SettingsDep = Annotated[ApiSettings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
AutocommitSessionDep = Annotated[Session, Depends(get_autocommit_session)]


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def get_current_owner(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The owner of the bearer key; with auth off (loopback only) everyone is the ``local`` owner.

    A recently checked key is answered from the cache on the event loop; otherwise one lookup per
    key runs in a worker thread, shared by the requests that miss the cache meanwhile.
    """
    cache: keys_service.AuthCache = request.app.state.auth_cache
    sessions = request.app.state.autocommit_session_factory
    if not settings.auth:
        if not _is_loopback(request.client.host if request.client else None):
            raise UnauthorizedError("authentication is off, so only loopback clients are served")
        local = cache.get(LOCAL_OWNER) or await _shared_lookup(
            request, LOCAL_OWNER, partial(_local_owner, sessions, cache)
        )
        assert local is not None  # the local owner is created when missing
        return local
    if credentials is None:
        raise UnauthorizedError("missing header 'Authorization: Bearer <api key>'")
    key_hash = keys_service.hash_key(credentials.credentials)
    owner = cache.get(key_hash) or await _shared_lookup(
        request, key_hash, partial(_authenticate, sessions, credentials.credentials, cache)
    )
    if owner is None:
        raise UnauthorizedError("unknown or revoked API key")
    return owner


async def _shared_lookup(request: Request, key: str, lookup: Callable[[], Principal | None]) -> Principal | None:
    """Run ``lookup`` in a worker thread, once for all the requests that ask for ``key`` meanwhile:
    a burst with a key this process has not cached yet makes one query, not one per request."""
    pending: dict[str, asyncio.Future[Principal | None]] = request.app.state.auth_lookups
    future = pending.get(key)
    if future is None:
        future = asyncio.ensure_future(run_in_threadpool(lookup))
        pending[key] = future
        future.add_done_callback(lambda done: pending.pop(key) if pending.get(key) is done else None)
    return await asyncio.shield(future)


def _authenticate(sessions: Callable[[], Session], token: str, cache: keys_service.AuthCache) -> Principal | None:
    with sessions() as session:  # closed in this thread: the connection goes back at once
        return keys_service.authenticate(session, token=token, cache=cache)


def _local_owner(sessions: Callable[[], Session], cache: keys_service.AuthCache) -> Principal:
    with sessions() as session:
        local = keys_service.get_or_create_owner(session, name=LOCAL_OWNER)
        session.commit()
        principal = Principal(id=local.id, name=local.name)
    cache.put(LOCAL_OWNER, principal)
    return principal


CurrentOwner = Annotated[Principal, Depends(get_current_owner)]


def get_owned_job(
    job_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The job's id.")],
    session: AutocommitSessionDep,
    owner: CurrentOwner,
) -> Job:
    """The path's job if it belongs to the caller, else a 404 (read outside a transaction; writers
    re-read it under a lock)."""
    try:
        return queries.get_job(session, owner_id=owner.id, job_id=job_id)
    finally:
        session.close()  # hand the connection back before the request waits for its handler's thread


JobDep = Annotated[Job, Depends(get_owned_job)]
