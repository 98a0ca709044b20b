"""Liveness and readiness probes. Neither shares anything with the request handlers: ``/healthz``
runs on the event loop and touches nothing; ``/readyz`` runs its checks in threads of its own, on a
database engine of its own (a fresh connection per probe), so a saturated API still answers them."""

from __future__ import annotations

from typing import Any, Literal

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from jobs.publish import check_broker
from service.deps import SettingsDep
from service.errors import problem
from service.openapi import PROBLEM_JSON, ReadinessChecks
from service.strict_json import StrictJsonRoute

router = APIRouter(route_class=StrictJsonRoute, tags=["health"])
#: Readiness checks run at most this many at a time, outside the handlers' thread pool.
PROBE_THREADS = 2


class Alive(BaseModel):
    """The process answers."""

    status: Literal["ok"]


class Ready(BaseModel):
    """Every dependency answered."""

    status: Literal["ok"]
    checks: ReadinessChecks


@router.get("/healthz", response_model=Alive)
async def healthz() -> Alive:
    """The process is up (no dependencies are checked; answered on the event loop)."""
    return Alive(status="ok")


def _probe(check: Any) -> str:
    try:
        check()
    except Exception as exc:  # a probe reports, it does not raise
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok"


def _ping_database(app: FastAPI) -> None:
    with app.state.probe_engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _checks(app: FastAPI, broker_url: str, timeout: float) -> dict[str, str]:
    return {
        "database": _probe(lambda: _ping_database(app)),
        "broker": _probe(lambda: check_broker(broker_url=broker_url, timeout=timeout)),
        "storage": _probe(app.state.store.check),
    }


def _probe_limiter(app: FastAPI) -> anyio.CapacityLimiter:
    limiter: anyio.CapacityLimiter | None = getattr(app.state, "probe_limiter", None)
    if limiter is None:  # made on first use: a limiter belongs to the running event loop
        limiter = app.state.probe_limiter = anyio.CapacityLimiter(PROBE_THREADS)
    return limiter


NOT_READY = {
    "description": "A dependency is unreachable; `checks` says which.",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/NotReady"}}},
}


@router.get("/readyz", response_model=Ready, responses={503: NOT_READY})
async def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    """Database, broker and artifact store are reachable; 503 with the failing check otherwise."""
    app = request.app
    checks = await anyio.to_thread.run_sync(
        _checks,
        app,
        settings.resolved_broker_url,
        settings.enqueue_timeout_seconds,
        limiter=_probe_limiter(app),
    )
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ok", "checks": checks})
    failing = ", ".join(name for name, value in checks.items() if value != "ok")
    return problem(status=503, detail=f"not ready: {failing}", instance=request.url.path, extra={"checks": checks})
