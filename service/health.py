"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from jobs.publish import check_broker
from service.deps import AutocommitSessionDep, SettingsDep
from service.errors import problem

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependencies are checked)."""
    return {"status": "ok"}


def _probe(check: Any) -> str:
    try:
        check()
    except Exception as exc:  # a probe reports, it does not raise
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok"


@router.get("/readyz", responses={503: {"description": "A dependency is unreachable."}})
def readyz(request: Request, session: AutocommitSessionDep, settings: SettingsDep) -> JSONResponse:
    """Database, broker and artifact store are reachable; 503 with the failing check otherwise."""
    checks = {
        "database": _probe(lambda: session.execute(text("SELECT 1"))),
        "broker": _probe(
            lambda: check_broker(broker_url=settings.resolved_broker_url, timeout=settings.enqueue_timeout_seconds)
        ),
        "storage": _probe(request.app.state.store.check),
    }
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ok", "checks": checks})
    failing = ", ".join(name for name, value in checks.items() if value != "ok")
    return problem(status=503, detail=f"not ready: {failing}", instance=request.url.path, extra={"checks": checks})
