"""HTTP for datasets: thin handlers over ``jobs.datasets`` and ``jobs.dataset_uploads``.

``POST /v1/datasets`` takes the .npz itself as the body, streamed to a temporary file under the
``MMKD_MAX_DATASET_BYTES`` cap (a declared length over it is refused before a byte is read), then
validated from that file. Another owner's dataset or upload is a 404 like a missing one.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from jobs import dataset_uploads, datasets
from jobs.models import Dataset
from service.datasets.schemas import DATASET_NAME, CompleteRequest, DatasetOut, DatasetPage, UploadOut, UploadRequest
from service.deps import DIGITS_ONLY, MAX_ID, AutocommitSessionDep, CurrentOwner, SessionDep, SettingsDep
from service.openapi import error_responses
from service.pagination import CURSOR_PARAM, decode_cursor, encode_cursor
from service.paths import id_segment
from service.strict_json import StrictJsonRoute

#: Every datasets operation needs a key and may find the server busy.
router = APIRouter(
    route_class=StrictJsonRoute, prefix="/v1/datasets", tags=["datasets"], responses=error_responses(401, 503)
)
CURSOR_KIND = "d"
NPZ_BODY = {
    "requestBody": {
        "required": True,
        "description": "The .npz file itself, at most `MMKD_MAX_DATASET_BYTES` (413 beyond).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
NO_SUCH_DATASET = {404: "No such dataset, or another owner's (the same answer)."}
NO_SUCH_UPLOAD = {404: "No such upload, or another owner's (the same answer)."}
NEEDS_S3 = "The server's store is not S3: send the file with `POST /v1/datasets`."
BUSY_UPLOAD = f"{NEEDS_S3} Or another completion or abort of this upload is under way."
DATASET_PATH = f"/{id_segment('dataset_id')}"  # decimal digits only; anything else matches no route (404)
UPLOAD_PATH = f"/uploads/{id_segment('upload_id')}"
LOCATION = {"Location": {"description": "The dataset's URL.", "schema": {"type": "string"}, "required": True}}
DATASET_LINKS = {
    operation: {"operationId": operation, "parameters": {"dataset_id": "$response.body#/id"}}
    for operation in ("get_dataset", "delete_dataset")
}
UPLOAD_LINKS = {
    operation: {"operationId": operation, "parameters": {"upload_id": "$response.body#/id"}}
    for operation in ("complete_dataset_upload", "abort_dataset_upload")
}
CREATED: dict[int | str, dict[str, Any]] = {
    201: {"description": "The dataset, stored.", "headers": LOCATION, "links": DATASET_LINKS}
}


def get_owned_dataset(
    dataset_id: Annotated[int, PathParam(ge=1, le=MAX_ID, description="The dataset's id.")],
    session: AutocommitSessionDep,
    owner: CurrentOwner,
) -> Dataset:
    """The path's dataset if it belongs to the caller, else a 404."""
    return datasets.get_dataset(session, owner_id=owner.id, dataset_id=dataset_id)


DatasetDep = Annotated[Dataset, Depends(get_owned_dataset)]


async def spool(chunks: AsyncIterator[bytes], path: Path, *, max_bytes: int) -> int:
    """Write ``chunks`` to ``path``; stop with a 413 at the first byte past ``max_bytes``."""
    received = 0
    with path.open("wb") as out:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_bytes:
                raise datasets.too_large(max_bytes)
            await run_in_threadpool(out.write, chunk)
    return received


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    openapi_extra=NPZ_BODY,
    responses={
        **CREATED,
        **error_responses(413, 503, said={503: "Busy, or the store is unreachable; nothing was stored."}),
    },
)
async def upload_dataset(
    request: Request,
    response: Response,
    session: SessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    name: Annotated[str, Query(pattern=DATASET_NAME, description="A label for the dataset.")] = "dataset",
) -> DatasetOut:
    """Upload an .npz as the request body; validated, stored under your prefix, summarised.

    A file the loader refuses (not an .npz, pickled or non-numeric arrays, non-finite values, fewer
    than 10 samples, a bad label or split...) is a 422 at `file` naming the array and the problem."""
    limit = settings.max_dataset_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise datasets.too_large(limit)
    with tempfile.TemporaryDirectory(prefix="mmkd-upload-") as folder:
        path = Path(folder) / "upload.npz"
        await spool(request.stream(), path, max_bytes=limit)
        create = partial(
            datasets.create_dataset,
            session,
            owner_id=owner.id,
            name=name,
            path=path,
            store=request.app.state.store,
            max_bytes=limit,
        )
        dataset = await run_in_threadpool(create)
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    return DatasetOut.of(dataset)


@router.get("", response_model=DatasetPage)
def list_datasets(
    session: AutocommitSessionDep,
    owner: CurrentOwner,
    limit: Annotated[int, Query(ge=1, le=200), DIGITS_ONLY] = 50,
    cursor: CURSOR_PARAM = None,
) -> DatasetPage:
    """Your datasets, newest first; keyset-paginated like jobs."""
    before_id = decode_cursor(CURSOR_KIND, cursor) if cursor else None
    page, next_id = datasets.list_datasets(session, owner_id=owner.id, limit=limit, before_id=before_id)
    return DatasetPage(
        items=[DatasetOut.of(dataset) for dataset in page],
        next_cursor=encode_cursor(CURSOR_KIND, next_id) if next_id is not None else None,
    )


@router.get(DATASET_PATH, response_model=DatasetOut, responses=error_responses(404, said=NO_SUCH_DATASET))
async def get_dataset(dataset: DatasetDep) -> DatasetOut:
    """One dataset and its summary."""
    return DatasetOut.of(dataset)


@router.delete(
    DATASET_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(
        404, 409, said={**NO_SUCH_DATASET, 409: "Queued or running jobs of yours use it (the detail lists them)."}
    ),
)
def delete_dataset(
    dataset_id: Annotated[int, PathParam(ge=1, le=MAX_ID, description="The dataset's id.")],
    session: SessionDep,
    owner: CurrentOwner,
    request: Request,
) -> Response:
    """Delete a dataset (409 while queued or running jobs of yours use it)."""
    store = request.app.state.store
    datasets.delete_dataset(session, owner_id=owner.id, dataset_id=dataset_id, store=store)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/uploads",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadOut,
    responses={
        201: {"description": "The upload, with a presigned URL per part.", "links": UPLOAD_LINKS},
        **error_responses(409, 413, 503, said={409: NEEDS_S3, 503: "Busy, or the store is unreachable."}),
    },
)
def start_dataset_upload(
    body: UploadRequest,
    session: SessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    request: Request,
) -> UploadOut:
    """Start a presigned multipart upload (S3 store only): PUT the parts, then complete it.

    With `files` instead of `size_bytes`, a folder of shards: .npz shards, or one .npy per array,
    each file its own multipart upload. Completion then checks the folder as a job's first pass
    does (layout, headers, label, split); the values are checked by each job as it streams them."""
    store = request.app.state.store
    if body.files is not None:
        plan = dataset_uploads.begin_sharded_upload(
            session,
            owner_id=owner.id,
            name=body.name,
            files=[(file.name, file.size_bytes) for file in body.files],
            store=store,
            max_file_bytes=settings.max_dataset_bytes,
            max_total_bytes=settings.max_sharded_dataset_bytes,
        )
    else:
        assert body.size_bytes is not None
        plan = dataset_uploads.begin_upload(
            session,
            owner_id=owner.id,
            name=body.name,
            size_bytes=body.size_bytes,
            store=store,
            max_bytes=settings.max_dataset_bytes,
        )
    return UploadOut.of(plan)


@router.post(
    f"{UPLOAD_PATH}/complete",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    responses={
        **CREATED,
        **error_responses(
            404, 409, 413, 503, said={**NO_SUCH_UPLOAD, 409: BUSY_UPLOAD, 503: "Busy, or the store is unreachable."}
        ),
    },
)
def complete_dataset_upload(
    upload_id: Annotated[int, PathParam(ge=1, le=MAX_ID, description="The upload's id.")],
    body: CompleteRequest,
    session: SessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> DatasetOut:
    """Assemble the parts, validate the file (or the folder of shards) and register it as a dataset.
    A folder that fails its checks is deleted; wrong parts leave the upload open for another try."""
    dataset = dataset_uploads.complete_upload(
        session,
        owner_id=owner.id,
        upload_id=upload_id,
        parts=None if body.parts is None else [(part.part_number, part.etag) for part in body.parts],
        files=None if body.files is None else {f.name: [(p.part_number, p.etag) for p in f.parts] for f in body.files},
        store=request.app.state.store,
        max_bytes=settings.max_dataset_bytes,
        max_total_bytes=settings.max_sharded_dataset_bytes,
    )
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    return DatasetOut.of(dataset)


@router.delete(
    UPLOAD_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(
        404, 409, 503, said={**NO_SUCH_UPLOAD, 409: BUSY_UPLOAD, 503: "Busy, or the store is unreachable."}
    ),
)
def abort_dataset_upload(
    upload_id: Annotated[int, PathParam(ge=1, le=MAX_ID, description="The upload's id.")],
    session: SessionDep,
    owner: CurrentOwner,
    request: Request,
) -> Response:
    """Abort an upload and drop the parts sent so far."""
    store = request.app.state.store
    dataset_uploads.abort_upload(session, owner_id=owner.id, upload_id=upload_id, store=store)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
