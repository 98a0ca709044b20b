"""The dashboard: server-rendered pages (Jinja2 + htmx) over the same domain functions as the API,
with the same owner isolation (another owner's job is the same 404 page as a missing one). Pages
stay out of the OpenAPI schema; docs/ui.md describes them."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from jobs import datasets, lifecycle, queries
from jobs.errors import ConflictError
from jobs.status import JobStatus
from service.deps import MAX_ID, AutocommitSessionDep, SessionDep, SettingsDep
from service.jobs.stream import open_stream
from service.paths import id_segment
from service.ui import views
from service.ui.rendering import PageRoute, render
from service.ui.session import (
    CSRF_FIELD,
    CSRF_HEADER,
    PRESESSION_COOKIE,
    Visitor,
    check_csrf,
    csrf_token,
    end_session,
    presession_nonce,
    remember_presession,
    sign_in,
    start_session,
    visitor,
)

router = APIRouter(include_in_schema=False, route_class=PageRoute)
#: The vendored and own static files, mounted at /ui/static.
UI_STATIC = Path(__file__).parent / "static"
JOB = id_segment("job_id")
ARTIFACT = id_segment("artifact_id")
#: Ids are 32-bit columns: a larger one is a 422 page, never a query.
JobId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
ArtifactId = Annotated[int, PathParam(ge=1, le=MAX_ID)]
NAME_FILTER = Annotated[str, Query(max_length=200)]


def _visitor(request: Request, session: AutocommitSessionDep, settings: SettingsDep) -> Visitor:
    try:
        return visitor(request, session, settings)
    finally:
        session.close()


VisitorDep = Annotated[Visitor, Depends(_visitor)]
CsrfHeader = Annotated[str | None, Header(alias=CSRF_HEADER, max_length=128)]


def _signin_form(request: Request, *, status_code: int = 200, error: str | None = None) -> Response:
    settings = request.app.state.settings
    nonce = presession_nonce(request)
    page = render(request, "signin.html", None, status_code=status_code, error=error, token=csrf_token(settings, nonce))
    remember_presession(page, request, nonce)
    return page


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request, settings: SettingsDep) -> Response:
    """The sign-in form (with auth off there is nothing to sign in to)."""
    if not settings.auth:
        return RedirectResponse("/", status_code=303)
    return _signin_form(request)


@router.post("/signin", response_class=HTMLResponse)
def signin(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    api_key: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form(alias=CSRF_FIELD, max_length=128)] = "",
) -> Response:
    """Check the form's token and the key; on success, a session cookie and the jobs list."""
    check_csrf(settings, request.cookies.get(PRESESSION_COOKIE, ""), csrf)
    key_hash = sign_in(request, session, settings, api_key=api_key)
    if key_hash is None:
        return _signin_form(request, status_code=401, error="Unknown or revoked API key.")
    response = RedirectResponse("/", status_code=303)
    start_session(response, request, settings, key_hash=key_hash)
    return response


@router.post("/signout")
def signout(
    request: Request, who: VisitorDep, csrf: Annotated[str, Form(alias=CSRF_FIELD, max_length=128)] = ""
) -> Response:
    """End the session."""
    check_csrf(request.app.state.settings, who.nonce, csrf)
    response = RedirectResponse("/signin", status_code=303)
    end_session(response)
    return response


@router.get("/", response_class=HTMLResponse)
def jobs_page(
    request: Request, who: VisitorDep, status: Annotated[list[JobStatus] | None, Query()] = None, name: NAME_FILTER = ""
) -> HTMLResponse:
    """The owner's jobs; the table refreshes itself."""
    return render(request, "jobs.html", who, statuses=list(JobStatus), chosen=status or [], name=name)


@router.get("/ui/fragments/jobs", response_class=HTMLResponse)
def jobs_rows(
    request: Request,
    who: VisitorDep,
    session: AutocommitSessionDep,
    status: Annotated[list[JobStatus] | None, Query()] = None,
    name: NAME_FILTER = "",
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> HTMLResponse:
    """The jobs table's rows (what the list page polls)."""
    rows, next_before = views.job_rows(session, owner_id=who.owner.id, statuses=status or [], name=name, before=before)
    return render(request, "jobs_rows.html", who, rows=rows, next_before=next_before)


@router.get(f"/jobs/{JOB}", response_class=HTMLResponse)
def job_page(request: Request, who: VisitorDep, session: AutocommitSessionDep, job_id: JobId) -> HTMLResponse:
    """One job, live."""
    job = queries.get_job(session, owner_id=who.owner.id, job_id=job_id)
    return render(request, "job.html", who, job=views.job_view(job), events=views.event_rows(session, job.id))


@router.get(f"/ui/jobs/{JOB}/artifacts", response_class=HTMLResponse)
def job_artifacts(request: Request, who: VisitorDep, session: AutocommitSessionDep, job_id: JobId) -> HTMLResponse:
    """The job's artifacts and report (refreshed when the job ends)."""
    job = queries.get_job(session, owner_id=who.owner.id, job_id=job_id)
    return render(request, "artifacts.html", who, job=views.job_view(job), artifacts=views.artifacts(session, job.id))


@router.get(f"/ui/jobs/{JOB}/artifacts/{ARTIFACT}")
def artifact(
    request: Request,
    who: VisitorDep,
    session: AutocommitSessionDep,
    job_id: JobId,
    artifact_id: ArtifactId,
    inline: bool = False,
) -> Response:
    """An artifact's bytes (local store) or a redirect to its presigned URL; ``inline`` shows a report image."""
    job = queries.get_job(session, owner_id=who.owner.id, job_id=job_id)
    found = queries.get_artifact(session, job_id=job.id, artifact_id=artifact_id)
    store = request.app.state.store
    if inline:
        return Response(views.inline_image(store, found), media_type="image/png")
    url = store.presigned_url(found.key)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    path = views.local_file(store, found)
    return FileResponse(path, filename=path.name, media_type="application/octet-stream")


@router.get(f"/ui/jobs/{JOB}/stream")
async def job_stream(request: Request, who: VisitorDep, session: AutocommitSessionDep, job_id: JobId) -> Response:
    """The API's live stream of the job, for the page's EventSource (which sends the cookie, not a key)."""
    job = queries.get_job(session, owner_id=who.owner.id, job_id=job_id)
    session.close()
    body = open_stream(
        request,
        job_id=job.id,
        owner_id=who.owner.id,
        owner=who.owner.name,
        last_event_id=request.headers.get("last-event-id", "")[:64],
    )
    return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get(f"/ui/jobs/{JOB}/points")
def job_points(who: VisitorDep, session: AutocommitSessionDep, job_id: JobId) -> JSONResponse:
    """Every metric point of a job by series (the compare page's curves), at most ``views.MAX_POINTS``."""
    job = queries.get_job(session, owner_id=who.owner.id, job_id=job_id)
    return JSONResponse(views.series_of(session, job.id))


@router.post(f"/jobs/{JOB}/cancel")
def cancel(
    request: Request,
    who: VisitorDep,
    session: SessionDep,
    job_id: JobId,
    csrf: Annotated[str, Form(alias=CSRF_FIELD, max_length=128)] = "",
    csrf_header: CsrfHeader = None,
) -> Response:
    """Cancel the job (a finished one stays as it is), then back to its page."""
    check_csrf(request.app.state.settings, who.nonce, csrf or csrf_header)
    job = queries.get_job(session, owner_id=who.owner.id, job_id=job_id)
    with contextlib.suppress(ConflictError):  # it finished meanwhile: the page shows how
        lifecycle.cancel_job(session, job=job)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request, who: VisitorDep, session: AutocommitSessionDep, ids: Annotated[str, Query(max_length=100)] = ""
) -> HTMLResponse:
    """Two to six runs: their curves overlaid and the spec fields in which they differ."""
    job_ids = views.parse_ids(ids)
    jobs = [queries.get_job(session, owner_id=who.owner.id, job_id=job_id) for job_id in job_ids]
    return render(request, "compare.html", who, jobs=[views.job_view(job) for job in jobs], diff=views.spec_diff(jobs))


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, who: VisitorDep, session: AutocommitSessionDep) -> HTMLResponse:
    """The owner's uploaded datasets and the built-in ones."""
    uploaded, _ = datasets.list_datasets(session, owner_id=who.owner.id, limit=200, before_id=None)
    return render(request, "datasets.html", who, uploaded=uploaded, builtin=views.builtin_datasets())
