"""HTTP for jobs: thin handlers that parse, call ``jobs.lifecycle`` and shape the response."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse

from core.spec import JobSpec
from jobs import datasets, lifecycle, queries
from jobs.errors import InvalidRequestError, NotFoundError
from service.deps import MAX_ID, AutocommitSessionDep, CurrentOwner, JobDep, SessionDep, SettingsDep
from service.errors import ERROR_RESPONSES
from service.jobs.schemas import (
    ArtifactList,
    ArtifactOut,
    EventList,
    EventOut,
    JobOut,
    JobPage,
    JobSummary,
    MetricList,
    MetricPointOut,
)
from service.pagination import decode_cursor, encode_cursor

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={401: ERROR_RESPONSES[401], 404: ERROR_RESPONSES[404]})
StatusName = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "Replay of an earlier submit with the same Idempotency-Key."},
        409: ERROR_RESPONSES[409],
        413: ERROR_RESPONSES[413],
        429: ERROR_RESPONSES[429],
        503: ERROR_RESPONSES[503],
    },
)
def submit_job(
    spec: JobSpec,
    request: Request,
    response: Response,
    session: SessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)] = None,
) -> JobOut:
    """Validate the spec, store a queued job, then enqueue it (same key + same body: same job)."""
    datasets.check_data_reference(session, owner_id=owner.id, spec=spec, data_allow=settings.data_allow)
    job, created = lifecycle.submit_job(
        session,
        owner_id=owner.id,
        spec=spec,
        idempotency_key=idempotency_key,
        max_attempts=settings.max_attempts,
        max_queued=settings.max_queued_per_owner,
    )
    if created:
        lifecycle.enqueue_job(session, job=job, enqueue=request.app.state.enqueue)
    else:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of_job(job, owner=owner.name)


@router.get("", response_model=JobPage)
def list_jobs(
    session: AutocommitSessionDep,
    owner: CurrentOwner,
    status_filter: Annotated[list[StatusName] | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> JobPage:
    """The caller's jobs, newest first, optionally only some statuses; keyset-paginated."""
    jobs, next_id = queries.list_jobs(
        session,
        owner_id=owner.id,
        statuses=list(status_filter or []),
        limit=limit,
        before_id=decode_cursor("j", cursor) if cursor else None,
    )
    return JobPage(
        items=[JobSummary.of(job, owner=owner.name) for job in jobs],
        next_cursor=encode_cursor("j", next_id) if next_id is not None else None,
    )


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job: JobDep, owner: CurrentOwner) -> JobOut:
    """One job: status, progress, latest metrics, result, error and links."""
    # async on purpose: nothing left to wait for (the dependencies did the I/O), so no thread hop
    return JobOut.of_job(job, owner=owner.name)


@router.post("/{job_id}/cancel", response_model=JobOut, responses={409: ERROR_RESPONSES[409]})
def cancel_job(job: JobDep, session: SessionDep, owner: CurrentOwner) -> JobOut:
    """Queued: cancelled now. Running: cancelling until the worker stops. Finished: 409."""
    return JobOut.of_job(lifecycle.cancel_job(session, job=job), owner=owner.name)


@router.get("/{job_id}/events", response_model=EventList)
def list_job_events(job: JobDep, session: AutocommitSessionDep) -> EventList:
    """State transitions and notable moments (enqueued, resumed...) with times and reasons."""
    return EventList(items=[EventOut.of(e) for e in queries.list_events(session, job_id=job.id)])


@router.get("/{job_id}/metrics", response_model=MetricList)
def get_job_metrics(
    job: JobDep,
    session: AutocommitSessionDep,
    names: Annotated[list[str] | None, Query(description="Series names; repeat or comma-separate.")] = None,
    since_step: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Only points at this step or later.")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> MetricList:
    """Metric series points, ordered by step then name."""
    wanted = [name for item in names or [] for name in item.split(",") if name]
    if any("\x00" in name or len(name) > 128 for name in wanted):
        raise InvalidRequestError([{"path": "query.names", "message": "at most 128 characters, no NUL"}])
    points = queries.list_metrics(session, job_id=job.id, names=wanted, since_step=since_step, limit=limit)
    return MetricList(items=[MetricPointOut.of(p) for p in points])


@router.get("/{job_id}/artifacts", response_model=ArtifactList)
def list_job_artifacts(job: JobDep, session: AutocommitSessionDep, request: Request) -> ArtifactList:
    """Artifacts with a presigned URL (S3) or this API's download URL (local store)."""
    store = request.app.state.store
    items = []
    for artifact in queries.list_artifacts(session, job_id=job.id):
        url = store.presigned_url(artifact.key) or str(
            request.url_for("download_artifact", job_id=job.id, artifact_id=artifact.id)
        )
        items.append(ArtifactOut.of(artifact, url=url))
    return ArtifactList(items=items)


@router.get(
    "/{job_id}/artifacts/{artifact_id}/download",
    response_class=FileResponse,
    responses={307: {"description": "Redirect to a presigned URL (S3 store)."}},
)
def download_artifact(
    job: JobDep,
    artifact_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    session: AutocommitSessionDep,
    request: Request,
) -> Response:
    """The artifact's bytes (local store) or a redirect to a presigned URL (S3 store)."""
    artifact = queries.get_artifact(session, job_id=job.id, artifact_id=artifact_id)
    store = request.app.state.store
    url = store.presigned_url(artifact.key)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    path = store.local_path(artifact.key)
    if path is None or not path.is_file():
        raise NotFoundError(f"artifact {artifact_id} is recorded but its file is missing")
    return FileResponse(path, filename=path.name)
