"""HTTP for a job's live side: its log lines (paged, or followed as server-sent events) and its
live stream (``service.jobs.stream``); the same paths, owner checks and errors as the other job routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse

from jobs import queries
from service.deps import DIGITS_ONLY, MAX_ID, CurrentOwner, JobDep
from service.jobs.router import JOB_PATH, NO_SUCH_JOB
from service.jobs.schemas import LogLineOut, LogPage
from service.jobs.stream import open_stream
from service.openapi import error_responses
from service.pagination import CURSOR_PARAM, decode_cursor, encode_cursor
from service.strict_json import StrictJsonRoute

router = APIRouter(route_class=StrictJsonRoute, prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 503))


#: One server-sent event, as OpenAPI 3.2 describes a stream's items; `data` is JSON text.
SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["job", "metrics", "event", "log", "end"]},
        "data": {"type": "string", "description": "JSON: see docs/api.md, *Live stream*."},
        "id": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+$"},
    },
}
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events (docs/api.md, *Live stream*): `job`, `metrics`, `event`, `log`, then `end`.",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    },
}
LAST_EVENT_ID = Header(
    alias="Last-Event-ID",
    max_length=64,
    pattern=r"^([0-9]{1,18}\.[0-9]{1,18}\.[0-9]{1,18})?$",
    description="Resume after this event's id (`<point>.<event>.<line>`), as a browser's EventSource does.",
)


@router.get(
    f"{JOB_PATH}/logs",
    response_model=LogPage,
    responses={**STREAMED, **error_responses(404, 422, 429, said=NO_SUCH_JOB)},
)
async def list_job_logs(
    job: JobDep,
    owner: CurrentOwner,
    request: Request,
    cursor: CURSOR_PARAM = None,
    limit: Annotated[int, Query(ge=1, le=2000), DIGITS_ONLY] = 500,
    attempt: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only this attempt's lines."), DIGITS_ONLY] = (
        None
    ),
    follow: Annotated[
        bool, Query(description="Stream the lines after `cursor` as server-sent `log` events until the job ends.")
    ] = False,
    last_event_id: Annotated[str, LAST_EVENT_ID] = "",
) -> Any:
    """The job's recent log lines, oldest first (the database keeps each job's newest lines; an
    attempt's whole log is its `log` artifact); `follow=true` streams them live instead."""
    after = decode_cursor("l", cursor) if cursor else 0
    if follow:
        body = open_stream(
            request,
            job_id=job.id,
            owner_id=owner.id,
            owner=owner.name,
            last_event_id=last_event_id or f"0.0.{after}",
            lines_only=True,
        )
        return EventSourceResponse(body, headers=NO_BUFFERING)
    hub = request.app.state.stream_hub
    lines = await hub.read(
        lambda session: queries.list_log_lines(session, job_id=job.id, after_id=after, limit=limit + 1, attempt=attempt)
    )
    page = lines[:limit]
    more = len(lines) > limit
    return LogPage(
        items=[LogLineOut.of(line) for line in page],
        next_cursor=encode_cursor("l", page[-1].id) if more else None,
    )


#: Proxies (nginx) must pass events on as they come.
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.get(
    f"{JOB_PATH}/stream",
    response_class=StreamingResponse,  # documented as text/event-stream (STREAMED); the SSE generator mode stays off
    responses={**STREAMED, **error_responses(404, 422, 429, said=NO_SUCH_JOB)},
)
async def stream_job(
    job: JobDep,
    owner: CurrentOwner,
    request: Request,
    last_event_id: Annotated[str, LAST_EVENT_ID] = "",
) -> EventSourceResponse:
    """The job live: its state, new metric points, events and log lines as server-sent events,
    until it ends; reconnect with `Last-Event-ID` to go on without gaps or repeats."""
    body = open_stream(request, job_id=job.id, owner_id=owner.id, owner=owner.name, last_event_id=last_event_id)
    return EventSourceResponse(body, headers=NO_BUFFERING)
