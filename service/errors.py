"""One error shape for every response: RFC 9457 ``application/problem+json``.

    {"type": "urn:mmkd:problem:validation", "title": "Invalid request", "status": 422,
     "detail": "2 problems", "instance": "/v1/jobs",
     "errors": [{"path": "dataset.primary", "message": "List should have at least 1 item"}]}

``errors`` appears on validation problems only; ``path`` is the dotted field path inside the body
(or ``query.limit`` / ``path.job_id`` for parameters).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.errors import InvalidRequestError, LimitExceededError, ServiceError, UnauthorizedError
from service.openapi import PROBLEM_JSON

log = logging.getLogger(__name__)
#: What a 503 for an exhausted connection pool tells the client to wait before retrying.
BUSY_RETRY_AFTER_SECONDS = 1


def problem(
    *,
    status: int,
    detail: str,
    instance: str,
    title: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """A problem+json response; ``extra`` adds members (RFC 9457 extensions)."""
    phrase = HTTPStatus(status).phrase
    body: dict[str, Any] = {
        "type": f"urn:mmkd:problem:{phrase.lower().replace(' ', '-')}",
        "title": title or phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if errors is not None:
        body["errors"] = errors
    body.update(extra or {})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def field_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    """Pydantic error dicts as ``{"path", "message"}``, dropping the leading ``body`` location.

    Malformed JSON is reported at ``(body)`` with the parser's reason and character position
    (FastAPI puts the position where a field path belongs)."""
    out = []
    for item in errors:
        loc = [str(part) for part in item.get("loc", ())]
        if item.get("type") == "json_invalid":
            reason = (item.get("ctx") or {}).get("error", "")
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            out.append({"path": "(body)", "message": f"malformed JSON: {reason}{at}".rstrip(": ")})
            continue
        if loc[:1] == ["body"]:
            loc = loc[1:]
        out.append({"path": ".".join(loc) or "(body)", "message": str(item.get("msg", ""))})
    return out


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, UnauthorizedError) else None
    if isinstance(exc, LimitExceededError):
        headers = {"Retry-After": str(exc.retry_after_seconds)}
    errors = exc.errors if isinstance(exc, InvalidRequestError) else None
    return problem(
        status=exc.status,
        title=exc.title,
        detail=exc.detail,
        instance=request.url.path,
        headers=headers,
        errors=errors,
    )


def _invalid(request: Request, errors: list[dict[str, str]]) -> JSONResponse:
    detail = "; ".join(f"{e['path']}: {e['message']}" for e in errors)
    return problem(status=422, title="Invalid request", detail=detail, instance=request.url.path, errors=errors)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _invalid(request, field_errors(exc.errors()))


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first route's)."""
    path = request.url.path
    methods = {
        method
        for route in iter_route_contexts(request.app.routes)
        if route.methods and route.path_regex.match(path)
        for method in route.methods
    }
    return sorted(methods)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # FastAPI's one 400: a body it could not read as JSON (not UTF-8)
        reason = f"malformed JSON: {exc.__cause__}" if exc.__cause__ else "malformed JSON"
        return _invalid(request, [{"path": "(body)", "message": reason}])
    headers = exc.headers
    if exc.status_code == 405:
        headers = {"Allow": ", ".join(allowed_methods(request))}
    return problem(status=exc.status_code, detail=str(exc.detail), instance=request.url.path, headers=headers)


async def _pool_exhausted(request: Request, exc: Exception) -> JSONResponse:
    log.warning("no database connection free for %s %s: %s", request.method, request.url.path, exc)
    return problem(
        status=503,
        title="Busy",
        detail=f"the server is busy (no database connection came free in time); retry in {BUSY_RETRY_AFTER_SECONDS} s",
        instance=request.url.path,
        headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(status=500, detail="internal error; see the server log", instance=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through :func:`problem`."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(PoolTimeoutError, _pool_exhausted)
    app.add_exception_handler(Exception, _unexpected_error)


#: Routes that stream their body to disk under a limit of their own (``MMKD_MAX_DATASET_BYTES``).
OWN_BODY_LIMIT = frozenset({("POST", "/v1/datasets")})
#: Only these methods' bodies are read; a body sent with any other is never looked at.
METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class BodySizeLimit:
    """ASGI middleware: a body over ``max_bytes`` is a 413, whether declared or streamed (except on
    the routes in ``OWN_BODY_LIMIT``, and on methods whose body no handler reads)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in METHODS_WITH_BODY
            or (scope["method"], scope["path"].rstrip("/")) in OWN_BODY_LIMIT
        ):
            await self.app(scope, receive, send)
            return
        too_large = (
            f"request body is larger than {self.max_bytes} bytes (MMKD_MAX_BODY_BYTES); datasets are uploaded "
            "with POST /v1/datasets, up to MMKD_MAX_DATASET_BYTES"
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = problem(status=413, detail=too_large, instance=scope["path"])
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StarletteHTTPException(status_code=413, detail=too_large)
            return message

        await self.app(scope, limited_receive, send)
