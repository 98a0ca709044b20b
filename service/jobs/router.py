"""HTTP for jobs: thin handlers that parse, call ``jobs.lifecycle`` and shape the response."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import StringConstraints

from core.spec import JobSpec
from jobs import datasets, lifecycle, limits, queries
from jobs.errors import NotFoundError
from jobs.status import JobStatus
from service.deps import (
    DIGITS_ONLY,
    MAX_ID,
    AutocommitSessionDep,
    CurrentOwner,
    JobDep,
    SessionDep,
    SettingsDep,
)
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
from service.openapi import error_responses
from service.pagination import CURSOR_PARAM, decode_cursor, encode_cursor
from service.paths import id_segment
from service.strict_json import StrictJsonRoute

#: Every jobs operation needs a key and may find the server busy.
router = APIRouter(route_class=StrictJsonRoute, prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 503))
NO_SUCH_JOB = {404: "No such job, or another owner's (the same answer)."}
JOB_PATH = f"/{id_segment('job_id')}"  # decimal digits only: `/v1/jobs/%0C2` or `/v1/jobs/+2` match no route (404)
LOCATION = {"Location": {"description": "The job's URL.", "schema": {"type": "string"}, "required": True}}
#: The job's other operations take the id a submit answers with (OpenAPI links, for stateful clients).
JOB_LINKS = {
    operation: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"}}
    for operation in (
        "get_job",
        "cancel_job",
        "list_job_events",
        "get_job_metrics",
        "list_job_artifacts",
        "list_job_logs",
        "stream_job",
    )
}
#: `names`: series names, each at most 128 characters without NUL; commas separate several in one value.
METRIC_NAMES = r"^[^,\x00]{0,128}(,[^,\x00]{0,128})*$"
SUBMIT_RULES = """Validate the spec, store a queued job, then enqueue it (same key + same body: same job).

Beyond the schema, a submit is a 422 when `dataset.id` is not one of your datasets, when a modality
the spec names is not in that dataset, when a task other than retrieval names a dataset without a
label, or when `dataset.uri` is not under a prefix the server allows (`MMKD_DATA_ALLOW`). The
spec's cross-field rules are in `JobSpec`'s description. A reused `Idempotency-Key` with another
spec is a 409; more queued jobs than `MMKD_MAX_QUEUED_PER_OWNER` is a 429."""
SPEC_EXAMPLES: dict[str, Any] = {
    "mfeat-paper": {
        "summary": "The paper's objective on a built-in dataset",
        "value": {
            "name": "mfeat-paper",
            "dataset": {"name": "mfeat", "primary": ["fou", "zer", "mor"], "auxiliary": ["fac", "pix", "kar"]},
            "method": {"name": "paper"},
            "train": {"epochs": 40, "seed": 0},
        },
    }
}
SUBMITTED: dict[int | str, dict[str, Any]] = {
    201: {"description": "The job, queued.", "headers": LOCATION, "links": JOB_LINKS},
    200: {
        "model": JobOut,
        "description": "Replay of an earlier submit with the same Idempotency-Key and spec: the same job.",
        "headers": LOCATION,
    },
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    description=SUBMIT_RULES,
    responses={
        **SUBMITTED,
        **error_responses(409, 413, 429, said={409: "The Idempotency-Key was used for another spec."}),
    },
)
def submit_job(
    spec: Annotated[JobSpec, Body(openapi_examples=SPEC_EXAMPLES)],
    request: Request,
    response: Response,
    session: SessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="Retry-safe submits: the same key and spec answer the same job (200).",
        ),
    ] = None,
) -> JobOut:
    """Submit a job."""
    limits.check_resources(
        spec,
        max_procs_per_node=settings.max_procs_per_node,
        gpus_per_node=settings.gpus_per_node,
        multi_node=settings.ray_address is not None,
    )
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
    status_filter: Annotated[list[JobStatus] | None, Query(alias="status", description="Repeat for several.")] = None,
    limit: Annotated[int, Query(ge=1, le=200), DIGITS_ONLY] = 50,
    cursor: CURSOR_PARAM = None,
    study_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only this study's trials and finalists."), DIGITS_ONLY
    ] = None,
) -> JobPage:
    """The caller's jobs, newest first, optionally only some statuses or one study's; keyset-paginated."""
    jobs, next_id = queries.list_jobs(
        session,
        owner_id=owner.id,
        statuses=list(status_filter or []),
        study_id=study_id,
        limit=limit,
        before_id=decode_cursor("j", cursor) if cursor else None,
    )
    return JobPage(
        items=[JobSummary.of(job, owner=owner.name) for job in jobs],
        next_cursor=encode_cursor("j", next_id) if next_id is not None else None,
    )


@router.get(JOB_PATH, response_model=JobOut, responses=error_responses(404, said=NO_SUCH_JOB))
async def get_job(job: JobDep, owner: CurrentOwner) -> JobOut:
    """One job: status, progress, latest metrics, result, error and links."""
    # async on purpose: nothing left to wait for (the dependencies did the I/O), so no thread hop
    return JobOut.of_job(job, owner=owner.name)


@router.post(
    f"{JOB_PATH}/cancel",
    response_model=JobOut,
    responses=error_responses(404, 409, 413, said={**NO_SUCH_JOB, 409: "The job already finished."}),
)
def cancel_job(job: JobDep, session: SessionDep, owner: CurrentOwner) -> JobOut:
    """Queued: cancelled now. Running: cancelling until the worker stops. Finished: 409."""
    return JobOut.of_job(lifecycle.cancel_job(session, job=job), owner=owner.name)


@router.get(f"{JOB_PATH}/events", response_model=EventList, responses=error_responses(404, said=NO_SUCH_JOB))
def list_job_events(job: JobDep, session: AutocommitSessionDep) -> EventList:
    """State transitions and notable moments (enqueued, resumed...) with times and reasons."""
    return EventList(items=[EventOut.of(e) for e in queries.list_events(session, job_id=job.id)])


@router.get(f"{JOB_PATH}/metrics", response_model=MetricList, responses=error_responses(404, said=NO_SUCH_JOB))
def get_job_metrics(
    job: JobDep,
    session: AutocommitSessionDep,
    names: Annotated[
        list[Annotated[str, StringConstraints(pattern=METRIC_NAMES)]] | None,
        Query(description="Series names (each at most 128 characters, no NUL); repeat or comma-separate."),
    ] = None,
    since_step: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="Only points at this step or later."), DIGITS_ONLY
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100_000), DIGITS_ONLY] = 10_000,
) -> MetricList:
    """Metric series points, ordered by step then name."""
    wanted = [name for item in names or [] for name in item.split(",") if name]
    points = queries.list_metrics(session, job_id=job.id, names=wanted, since_step=since_step, limit=limit)
    return MetricList(items=[MetricPointOut.of(p) for p in points])


@router.get(f"{JOB_PATH}/artifacts", response_model=ArtifactList, responses=error_responses(404, said=NO_SUCH_JOB))
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


DOWNLOADED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The artifact's bytes (local store).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    307: {
        "description": "S3 store: a redirect to a presigned URL, valid one hour (send no API key there).",
        "headers": {"Location": {"description": "The presigned URL.", "schema": {"type": "string"}, "required": True}},
    },
}


@router.get(
    f"{JOB_PATH}/artifacts/{id_segment('artifact_id')}/download",
    response_class=FileResponse,
    responses={
        **DOWNLOADED,
        **error_responses(404, said={404: "No such job or artifact, or its file is missing."}),
    },
)
def download_artifact(
    job: JobDep,
    artifact_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The artifact's id.")],
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
    return FileResponse(path, filename=path.name, media_type="application/octet-stream")
