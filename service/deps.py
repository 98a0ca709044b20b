"""FastAPI dependencies as ``Annotated`` aliases: a session per request, the calling owner, and the
job named by the path (resolved once; a missing or foreign job is a 404)."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
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
_bearer = HTTPBearer(auto_error=False, description="An API key from `mmkd keys create`.")


async def get_settings_dep(request: Request) -> ApiSettings:
    """The settings the app was created with."""
    settings: ApiSettings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for this request (service functions commit explicitly).

    Opening and closing run on the event loop: neither does I/O, except rolling back a transaction
    an error left open, which goes to a worker thread. Queries run in the threaded handlers.
    """
    session = request.app.state.session_factory()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


async def get_autocommit_session(request: Request) -> AsyncIterator[Session]:
    """A session whose statements commit one by one: one round trip per read, no BEGIN/ROLLBACK,
    and nothing to roll back when it closes."""
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
    session: AutocommitSessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The owner of the bearer key; with auth off (loopback only) everyone is the ``local`` owner.

    A recently checked key is answered from the cache on the event loop; otherwise the lookup runs
    in a worker thread.
    """
    cache: keys_service.AuthCache = request.app.state.auth_cache
    if not settings.auth:
        if not _is_loopback(request.client.host if request.client else None):
            raise UnauthorizedError("authentication is off, so only loopback clients are served")
        local = cache.get(LOCAL_OWNER)
        return local if local is not None else await run_in_threadpool(_local_owner, session, cache)
    if credentials is None:
        raise UnauthorizedError("missing header 'Authorization: Bearer <api key>'")
    token = credentials.credentials
    owner = cache.get(keys_service.hash_key(token)) or await run_in_threadpool(
        partial(keys_service.authenticate, session, token=token, cache=cache)
    )
    if owner is None:
        raise UnauthorizedError("unknown or revoked API key")
    return owner


def _local_owner(session: Session, cache: keys_service.AuthCache) -> Principal:
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
    return queries.get_job(session, owner_id=owner.id, job_id=job_id)


JobDep = Annotated[Job, Depends(get_owned_job)]
