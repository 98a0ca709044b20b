"""The API's Prometheus metrics and ``GET /metrics``.

Requests are counted by route template (``/v1/jobs/{job_id}``, never the raw path, so the label
set stays bounded; ``unmatched`` for paths no route matched) and status; their latency goes to a
histogram by route, except live streams, whose "latency" is how long a dashboard stayed open. Jobs
by status and the age of the oldest queued job are read at scrape time, with one grouped query on an
engine of their own. Under several uvicorn workers (``mmkd serve --workers N`` sets
``PROMETHEUS_MULTIPROC_DIR``) each process writes its values to that folder and a scrape sums them.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.models import Job
from jobs.status import JobStatus
from service.admission import is_live_stream
from service.deps import SettingsDep, get_current_owner

REQUESTS = Counter("mmkd_api_requests_total", "HTTP requests answered.", ["method", "route", "status"])
LATENCY = Histogram(
    "mmkd_api_request_duration_seconds",
    "Time to answer an HTTP request (live streams excluded).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
router = APIRouter(include_in_schema=False)


def route_of(scope: Scope) -> str:
    """The matched route's template, the static mount, or ``unmatched``."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path_format"):
        return str(route.path_format)
    if scope.get("path", "").startswith("/ui/static/"):
        return "/ui/static"
    return "unmatched"


class RequestMetrics:
    """ASGI middleware: count every answer by route and status, time all but live streams."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route, method = route_of(scope), scope["method"]
            REQUESTS.labels(method, route, str(status)).inc()
            if not is_live_stream(scope):
                LATENCY.labels(method, route).observe(time.perf_counter() - started)


class JobsCollector(Collector):
    """Jobs by status and the oldest queued job's wait, read when Prometheus scrapes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One grouped count and one min(queued_at), on the collector's own engine."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            counts = {JobStatus(status).value: int(count) for status, count in rows}
            oldest = connection.execute(
                select(func.min(Job.queued_at)).where(Job.status == JobStatus.QUEUED)
            ).scalar_one_or_none()
        jobs = GaugeMetricFamily("mmkd_jobs", "Jobs by status, all owners.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], float(counts.get(status.value, 0)))
        yield jobs
        if isinstance(oldest, str):  # SQLite returns the aggregate as text
            oldest = dt.datetime.fromisoformat(oldest)
        waited = 0.0
        if oldest is not None:
            oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=dt.UTC)
            waited = (dt.datetime.now(dt.UTC) - oldest).total_seconds()
        help_text = "How long the oldest queued job has waited (0: none queued)."
        yield GaugeMetricFamily("mmkd_queue_oldest_wait_seconds", help_text, value=waited)


def registry_for(engine: Engine) -> CollectorRegistry:
    """What ``/metrics`` shows: this process's (or, in multi-process mode, every process's) metrics
    and the jobs collector."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Process())
    registry.register(JobsCollector(engine))
    return registry


class _Process(Collector):
    """This process's metrics from the default registry (requests, latency, the runtime's own)."""

    def collect(self) -> Iterator[Any]:
        """Everything the default registry holds."""
        yield from REGISTRY.collect()


@router.get("/metrics")
async def metrics(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
) -> Response:
    """Prometheus text exposition (docs/api.md, *Metrics*); any valid key when not public."""
    if not settings.metrics_public:
        await get_current_owner(request, settings, credentials)
    body = await run_in_threadpool(generate_latest, request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
