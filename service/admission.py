"""Admission control: a bounded number of requests inside the application at once.

Every request that reaches FastAPI does a few milliseconds of work on the event loop (parsing and
validating its body, resolving dependencies) before it waits for a handler thread. When a thousand
arrive together, that work queues on the loop ahead of anything that arrives later, ``/healthz``
included, and each response waits behind it too. Letting only ``limit`` requests in at a time (the
rest wait their turn, first come first served, before any of their work starts) keeps the loop's
queue short; the probes, streamed uploads and live streams skip the line. A request that cannot get in within
``max_wait_seconds`` is answered 503 with ``Retry-After`` rather than waiting without end.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import OWN_BODY_LIMIT, problem

#: Paths that never wait: the probes and the scrape must answer while the API is saturated.
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
#: Requests that stream a large body (dataset uploads, ``OWN_BODY_LIMIT``) do not take a slot
#: either: they mostly wait for the client's bytes, and a few slow senders holding slots would
#: shut every other request out.
STREAMED = OWN_BODY_LIMIT
RETRY_AFTER_SECONDS = 1
#: Live streams (server-sent events) stay open as long as their job runs, doing almost nothing:
#: holding a slot each, a few open dashboards would shut every other request out. Their cost is
#: bounded per owner instead (``MMKD_MAX_STREAMS_PER_OWNER``) and their reads run apart.
#: What FastAPI reads as a true boolean query value.
TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
LIVE = re.compile(r"^/(v1|ui)/jobs/[0-9]+/(stream|logs)$")


def is_live_stream(scope: Scope) -> bool:
    """A stream of a job's events, or of its log lines (``/logs?follow=true``)."""
    found = LIVE.match(scope["path"])
    if found is None or scope["method"] != "GET":
        return False
    if found.group(2) == "stream":
        return True
    follow = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("follow", [])
    return any(value.lower() in TRUE for value in follow)


class Admission:
    """ASGI middleware: at most ``limit`` requests (probes aside) inside the app at once."""

    def __init__(self, app: ASGIApp, limit: int, max_wait_seconds: float) -> None:
        self.app = app
        self.limit = limit
        self.max_wait_seconds = max_wait_seconds
        self._slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}  # one per serving loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in PROBES
            or (scope["method"], scope["path"].rstrip("/")) in STREAMED
            or is_live_stream(scope)
        ):
            await self.app(scope, receive, send)
            return
        slots = self._slots.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(self.limit))
        try:
            await asyncio.wait_for(slots.acquire(), self.max_wait_seconds)
        except TimeoutError:
            detail = f"the server is busy (no room for this request within {self.max_wait_seconds:.0f} s)"
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            response = problem(status=503, title="Busy", detail=detail, instance=scope["path"], headers=headers)
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            slots.release()
