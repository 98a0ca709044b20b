"""The API application. ``create_app()`` wires settings, database, broker and storage; nothing is
built at import time, and nothing here imports torch."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from jobs.db import autocommit_session_factory, engine_for, session_factory, unpooled_engine
from jobs.keys import AuthCache
from jobs.publish import publisher
from service.admission import Admission
from service.config import ApiSettings, get_settings
from service.datasets.router import router as datasets_router
from service.errors import BodySizeLimit, install_error_handlers
from service.health import router as health_router
from service.jobs.live import router as live_router
from service.jobs.router import router as jobs_router
from service.jobs.stream import StreamHub
from service.keys.router import router as keys_router
from service.openapi import problem_openapi
from service.studies.router import router as studies_router
from service.telemetry import RequestMetrics, registry_for
from service.telemetry import router as telemetry_router
from service.ui.router import UI_STATIC
from service.ui.router import router as ui_router
from storage.store import store_from_settings

log = logging.getLogger(__name__)
#: A request that cannot get into the app for this long is answered 503 with Retry-After.
ADMISSION_WAIT_SECONDS = 30.0


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
    # More connections than handler threads: a thread holds at most one at a time (two while a
    # dataset row stays locked), so some thread can always make progress, and a caller that
    # still finds none within the pool timeout gets a 503 with Retry-After instead of a hang.
    engine = engine_for(
        settings.resolved_database_url,
        settings.db_pool_size,
        max_overflow=max(settings.db_pool_size, settings.threads + 1 - settings.db_pool_size),
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    app.state.session_factory = session_factory(engine)
    app.state.autocommit_session_factory = autocommit_session_factory(engine)
    app.state.probe_engine = unpooled_engine(settings.resolved_database_url)  # /readyz: never the handlers' pool
    app.state.auth_lookups = {}
    app.state.enqueue = publisher(settings)
    app.state.store = store_from_settings(settings)
    app.state.auth_cache = AuthCache(settings.auth_cache_seconds)
    # Live streams read on an engine of their own: open dashboards never take the handlers' connections.
    app.state.stream_hub = StreamHub(
        engine_for(settings.resolved_database_url, 2),
        poll_seconds=settings.stream_poll_seconds,
        max_per_owner=settings.max_streams_per_owner,
    )
    app.state.metrics_registry = registry_for(unpooled_engine(settings.resolved_database_url))
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: a request waits for its turn before any of its work starts.
    app.add_middleware(Admission, limit=2 * settings.threads, max_wait_seconds=ADMISSION_WAIT_SECONDS)
    app.add_middleware(RequestMetrics)  # outermost: counts the 503s admission gives too
    install_error_handlers(app)
    app.openapi = problem_openapi(app)  # type: ignore[method-assign]
    routers = (health_router, jobs_router, studies_router, live_router, keys_router, datasets_router, telemetry_router)
    for router in (*routers, ui_router):
        app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=UI_STATIC), name="ui-static")
    if not settings.auth:
        log.warning("authentication is OFF: every loopback client acts as owner 'local'")
    return app
