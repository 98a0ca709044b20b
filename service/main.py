"""The API application. ``create_app()`` wires settings, database, broker and storage; nothing is
built at import time, and nothing here imports torch."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.routing import APIRoute

from jobs.db import autocommit_session_factory, engine_for, session_factory
from jobs.keys import AuthCache
from jobs.publish import publisher
from service.config import ApiSettings, get_settings
from service.datasets.router import router as datasets_router
from service.errors import BodySizeLimit, install_error_handlers, problem_openapi
from service.health import router as health_router
from service.jobs.router import router as jobs_router
from service.keys.router import router as keys_router
from storage.store import store_from_settings

log = logging.getLogger(__name__)


def operation_id(route: APIRoute) -> str:
    """Stable OpenAPI operation ids: the handler's name (``submit_job``, ``get_job``...)."""
    return route.name


def _lifespan(threads: int) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Handlers that query the database run in this many threads; more only fight over the GIL.
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield

    return lifespan


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    if not settings.auth and not settings.bound_to_loopback:
        raise RuntimeError(f"MMKD_AUTH=off is allowed only on loopback; MMKD_HOST is {settings.host}")
    app = FastAPI(
        title="mmkd",
        version="1",
        summary="Training service for multimodal knowledge distillation.",
        generate_unique_id_function=operation_id,
        lifespan=_lifespan(settings.threads),
    )
    app.state.settings = settings
    engine = engine_for(settings.resolved_database_url, settings.db_pool_size)
    app.state.session_factory = session_factory(engine)
    app.state.autocommit_session_factory = autocommit_session_factory(engine)
    app.state.enqueue = publisher(settings)
    app.state.store = store_from_settings(settings)
    app.state.auth_cache = AuthCache(settings.auth_cache_seconds)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.openapi = problem_openapi(app)  # type: ignore[method-assign]
    for router in (health_router, jobs_router, keys_router, datasets_router):
        app.include_router(router)
    if not settings.auth:
        log.warning("authentication is OFF: every loopback client acts as owner 'local'")
    return app
