"""Presigned multipart uploads of large datasets, on an S3 store only.

The owner asks for an upload (``begin_upload``: a temporary key under ``uploads/{owner_id}/``,
one presigned PUT URL per part), sends the parts straight to S3, then completes it
(``complete_upload``): S3 assembles the object, the API checks its size before reading it, validates
a local copy with the same checks as a direct upload, stores that copy as the dataset and deletes
the temporary object, whatever the outcome. On a local store there is nothing to presign: 409.
"""

from __future__ import annotations

import datetime as dt
import math
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.errors import StorageError
from jobs.datasets import StorageUnavailableError, delete_objects, store_dataset, too_large, validate_file
from jobs.errors import ConflictError, InvalidRequestError, NotFoundError
from jobs.models import Dataset, DatasetUpload
from jobs.orm import utcnow
from storage.store import ArtifactStore

NEEDS_S3 = (
    "presigned uploads need an S3 store (MMKD_STORAGE_URL=s3://bucket/prefix); this server keeps its files "
    "locally, so send the file itself with POST /v1/datasets"
)
MIN_PART_BYTES = 8 << 20  # S3 wants every part but the last to hold at least 5 MiB
MAX_PARTS = 1_000  # under S3's 10,000, so the URL list and the completion body stay small
URL_SECONDS = 3600


@runtime_checkable
class MultipartStore(Protocol):
    """A store that can hand out presigned part URLs (``storage.s3.S3Store``)."""

    def start_multipart(self, key: str) -> str:
        """Begin an upload; returns its id."""

    def presign_part(self, key: str, upload_id: str, part_number: int, *, expires_s: int = 3600) -> str:
        """A presigned PUT URL for one part."""

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        """Assemble the parts; ValueError when they are refused."""

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop the upload and its parts."""


@dataclass(frozen=True)
class UploadPlan:
    """What the owner needs to send the parts: the upload row, part size and one URL per part."""

    upload: DatasetUpload
    part_urls: list[str]
    expires_at: dt.datetime


def _multipart(store: ArtifactStore) -> MultipartStore:
    if not isinstance(store, MultipartStore):
        raise ConflictError(NEEDS_S3)
    return store


def begin_upload(
    session: Session, *, owner_id: int, name: str, size_bytes: int, store: ArtifactStore, max_bytes: int
) -> UploadPlan:
    """Start a multipart upload of ``size_bytes`` (checked against the limit) and presign its parts."""
    s3 = _multipart(store)
    if size_bytes > max_bytes:
        raise too_large(max_bytes)
    part_size = max(MIN_PART_BYTES, math.ceil(size_bytes / MAX_PARTS))
    parts = max(1, math.ceil(size_bytes / part_size))
    key = f"uploads/{owner_id}/{uuid.uuid4().hex}.npz"
    try:
        multipart_id = s3.start_multipart(key)
        urls = [s3.presign_part(key, multipart_id, number, expires_s=URL_SECONDS) for number in range(1, parts + 1)]
    except StorageError as exc:
        raise StorageUnavailableError(f"the upload could not be started, try again: {exc}") from exc
    upload = DatasetUpload(
        owner_id=owner_id, name=name, key=key, multipart_id=multipart_id, size_bytes=size_bytes, part_size=part_size
    )
    session.add(upload)
    session.commit()
    return UploadPlan(upload, urls, utcnow() + dt.timedelta(seconds=URL_SECONDS))


def _find_upload(session: Session, *, owner_id: int, upload_id: int, lock: bool = False) -> DatasetUpload:
    query = select(DatasetUpload).where(DatasetUpload.id == upload_id, DatasetUpload.owner_id == owner_id)
    upload = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if upload is None:
        raise NotFoundError(f"no upload {upload_id}")
    return upload


def complete_upload(
    session: Session,
    *,
    owner_id: int,
    upload_id: int,
    parts: list[tuple[int, str]],
    store: ArtifactStore,
    max_bytes: int,
) -> Dataset:
    """Assemble, check and register the upload as a dataset; the temporary object never outlives
    this call. Wrong parts are a 422 and leave the upload open for another try.

    No transaction stays open while bytes move: the upload's row is read, S3 assembles the parts,
    then the row is claimed (deleted) in a short transaction that only one caller wins.
    """
    s3 = _multipart(store)
    upload = _find_upload(session, owner_id=owner_id, upload_id=upload_id)
    name, key, multipart_id = upload.name, upload.key, upload.multipart_id
    session.rollback()
    try:
        s3.complete_multipart(key, multipart_id, sorted(parts))
    except ValueError as exc:
        raise InvalidRequestError([{"path": "parts", "message": f"{exc}; send every part's number and ETag"}]) from exc
    except StorageError as exc:
        raise StorageUnavailableError(f"the upload could not be completed, try again: {exc}") from exc
    claimed = session.execute(
        delete(DatasetUpload).where(DatasetUpload.id == upload_id, DatasetUpload.owner_id == owner_id)
    )
    session.commit()
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise NotFoundError(f"no upload {upload_id}")
    try:
        with tempfile.TemporaryDirectory(prefix="mmkd-upload-") as folder:
            local = Path(folder) / "upload.npz"
            if store.size(key) > max_bytes:  # parts may be larger than planned: check before reading
                raise too_large(max_bytes)
            store.download(key, local)
            summary = validate_file(local, max_bytes=max_bytes)
            return store_dataset(session, owner_id=owner_id, name=name, path=local, summary=summary, store=store)
    except StorageError as exc:
        raise StorageUnavailableError(f"the upload could not be read back, start again: {exc}") from exc
    finally:
        delete_objects(store, [key])


def abort_upload(session: Session, *, owner_id: int, upload_id: int, store: ArtifactStore) -> None:
    """Drop an upload that will not be completed, with the parts S3 holds for it."""
    s3 = _multipart(store)
    upload = _find_upload(session, owner_id=owner_id, upload_id=upload_id, lock=True)
    try:
        s3.abort_multipart(upload.key, upload.multipart_id)
    except ValueError:
        pass  # S3 no longer knows it: nothing to drop
    except StorageError as exc:
        session.rollback()
        raise StorageUnavailableError(f"the upload could not be aborted, try again: {exc}") from exc
    session.delete(upload)
    session.commit()
