"""Presigned multipart uploads of large datasets, on an S3 store only.

The owner asks for an upload (``begin_upload``: a temporary key under ``uploads/{owner_id}/``,
one presigned PUT URL per part), sends the parts straight to S3, then completes it
(``complete_upload``): S3 assembles the object, the API checks its size before reading it, validates
a local copy with the same checks as a direct upload, stores that copy as the dataset and deletes
the temporary object, whatever the outcome. On a local store there is nothing to presign: 409.

A sharded upload (``begin_sharded_upload``) sends a folder of shards (``core.data.shards``): each
file is a multipart upload of its own, straight to its place in the dataset's folder under
``datasets/{owner_id}/``, so tens of gigabytes are never copied. Completing it completes every
file's upload (their part URLs die with it), checks the sizes, then runs the first pass a job makes
over the folder (``core.data.summary.summarise_shards``) before the row is recorded; a folder that
fails is deleted whole. No row ever names a folder that was not checked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.data.summary import summarise_shards
from core.errors import DataError, StorageError
from jobs.datasets import (
    PayloadTooLargeError,
    StorageUnavailableError,
    dataset_objects,
    delete_objects,
    record_dataset,
    store_dataset,
    too_large,
    validate_file,
)
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
MAX_UPLOAD_FILES = 1_000  # files of one sharded upload: its URLs (at most MAX_PARTS + files) stay few
URL_SECONDS = 3600
ANNOTATION_FILES = ("label.npy", "split.npy", "class_names.npy")  # read whole: within the file limit


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
class FilePlan:
    """One file of a sharded upload: its name, size and one URL per part."""

    name: str
    size_bytes: int
    part_urls: list[str]


@dataclass(frozen=True)
class UploadPlan:
    """What the owner needs to send the parts: the upload row, part size and one URL per part (of
    the one file, or of each file of a sharded upload)."""

    upload: DatasetUpload
    part_urls: list[str]
    expires_at: dt.datetime
    files: list[FilePlan] = field(default_factory=list)


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


def sharded_too_large(max_bytes: int) -> PayloadTooLargeError:
    """The one refusal of a sharded dataset over its total limit."""
    return PayloadTooLargeError(
        f"a sharded dataset may hold at most {max_bytes} bytes in all (MMKD_MAX_SHARDED_DATASET_BYTES)"
    )


def check_file_sizes(sizes: dict[str, int], *, max_file_bytes: int, max_total_bytes: int) -> None:
    """A 413 for an .npz shard or an annotation's .npy over ``max_file_bytes`` (each is read whole) or
    a total over ``max_total_bytes``; a modality's .npy is read in ranges and only counts to the total."""
    for name, size in sizes.items():
        if (name.endswith(".npz") or name in ANNOTATION_FILES) and size > max_file_bytes:
            raise PayloadTooLargeError(
                f"file {name!r} holds {size} bytes; a shard may hold at most {max_file_bytes} (MMKD_MAX_DATASET_BYTES)"
            )
    if sum(sizes.values()) > max_total_bytes:
        raise sharded_too_large(max_total_bytes)


def begin_sharded_upload(
    session: Session,
    *,
    owner_id: int,
    name: str,
    files: list[tuple[str, int]],
    store: ArtifactStore,
    max_file_bytes: int,
    max_total_bytes: int,
) -> UploadPlan:
    """Start one multipart upload per file of a folder of shards (``(name, size)``: all ``.npz`` or
    all ``.npy``, each name once) straight into a new dataset folder, and presign their parts."""
    s3 = _multipart(store)
    names = [file_name for file_name, _ in files]
    duplicates = sorted({file_name for file_name in names if names.count(file_name) > 1})
    if duplicates:
        raise InvalidRequestError([{"path": "files", "message": f"file {duplicates[0]!r} is named more than once"}])
    if len({file_name.rsplit(".", 1)[-1] for file_name in names}) > 1:
        message = "mixes .npz shards and .npy arrays; a sharded dataset is one layout or the other"
        raise InvalidRequestError([{"path": "files", "message": message}])
    sizes = dict(files)
    check_file_sizes(sizes, max_file_bytes=max_file_bytes, max_total_bytes=max_total_bytes)
    total = sum(sizes.values())
    part_size = max(MIN_PART_BYTES, math.ceil(total / MAX_PARTS))
    folder = f"datasets/{owner_id}/{uuid.uuid4().hex}/"
    started: list[dict[str, object]] = []
    plans = []
    try:
        for file_name, size in files:
            multipart_id = s3.start_multipart(folder + file_name)
            parts = max(1, math.ceil(size / part_size))
            started.append({"name": file_name, "size_bytes": size, "multipart_id": multipart_id, "parts": parts})
            urls = [
                s3.presign_part(folder + file_name, multipart_id, n, expires_s=URL_SECONDS) for n in range(1, parts + 1)
            ]
            plans.append(FilePlan(file_name, size, urls))
    except StorageError as exc:
        _abort_files(s3, folder, started)
        raise StorageUnavailableError(f"the upload could not be started, try again: {exc}") from exc
    upload = DatasetUpload(
        owner_id=owner_id, name=name, key=folder, multipart_id="", size_bytes=total, part_size=part_size, files=started
    )
    session.add(upload)
    session.commit()
    return UploadPlan(upload, [], utcnow() + dt.timedelta(seconds=URL_SECONDS), plans)


def _abort_files(s3: MultipartStore, folder: str, files: list[dict[str, object]]) -> None:
    """Drop each file's multipart upload; one S3 no longer knows is already gone."""
    for entry in files:
        with contextlib.suppress(ValueError):
            s3.abort_multipart(folder + str(entry["name"]), str(entry["multipart_id"]))


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
    parts: list[tuple[int, str]] | None,
    store: ArtifactStore,
    max_bytes: int,
    files: dict[str, list[tuple[int, str]]] | None = None,
    max_total_bytes: int | None = None,
) -> Dataset:
    """Assemble, check and register the upload as a dataset: ``parts`` (number, ETag) for a one-file
    upload, ``files`` (each file's parts, by name) for a sharded one. The temporary object never
    outlives this call; a sharded upload's folder is deleted when it fails its checks. Wrong parts
    are a 422 and leave the upload open for another try.

    No transaction stays open while bytes move: the upload's row is read, S3 assembles the parts,
    then the row is claimed (deleted) in a short transaction that only one caller wins.
    """
    s3 = _multipart(store)
    upload = _find_upload(session, owner_id=owner_id, upload_id=upload_id)
    name, key, multipart_id, planned = upload.name, upload.key, upload.multipart_id, upload.files
    session.rollback()
    if (planned is None) != (files is None) or (files is None) == (parts is None):
        field_name, kind = ("files", "a folder of shards") if planned is not None else ("parts", "one file")
        message = f"this upload is of {kind}: complete it with {field_name}"
        raise InvalidRequestError([{"path": field_name, "message": message}])
    if planned is None:
        assert parts is not None
        _complete_part(s3, key, multipart_id, parts, path="parts")
    else:
        assert files is not None
        _complete_files(s3, store, key, planned, files)
    claimed = session.execute(
        delete(DatasetUpload).where(DatasetUpload.id == upload_id, DatasetUpload.owner_id == owner_id)
    )
    session.commit()
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise NotFoundError(f"no upload {upload_id}")
    if planned is not None:
        total = max_total_bytes if max_total_bytes is not None else max_bytes
        return _register_folder(session, owner_id, name, key, store, max_bytes, total)
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


def _complete_part(s3: MultipartStore, key: str, multipart_id: str, parts: list[tuple[int, str]], *, path: str) -> None:
    try:
        s3.complete_multipart(key, multipart_id, sorted(parts))
    except ValueError as exc:
        raise InvalidRequestError([{"path": path, "message": f"{exc}; send every part's number and ETag"}]) from exc
    except StorageError as exc:
        raise StorageUnavailableError(f"the upload could not be completed, try again: {exc}") from exc


def _complete_files(
    s3: MultipartStore,
    store: ArtifactStore,
    folder: str,
    planned: list[dict[str, Any]],
    sent: dict[str, list[tuple[int, str]]],
) -> None:
    """Complete each file's multipart upload; a file an earlier try completed is already whole."""
    names = [str(entry["name"]) for entry in planned]
    if sorted(sent) != sorted(names):
        missing, unknown = sorted(set(names) - set(sent)), sorted(set(sent) - set(names))
        message = f"send every file of the upload once: missing {missing[:5]}, not in the upload {unknown[:5]}"
        raise InvalidRequestError([{"path": "files", "message": message}])
    for entry in planned:
        file_name = str(entry["name"])
        try:
            s3.complete_multipart(folder + file_name, str(entry["multipart_id"]), sorted(sent[file_name]))
        except ValueError as exc:
            if not _exists(store, folder + file_name):
                message = f"{exc}; send every part's number and ETag of {file_name!r}"
                raise InvalidRequestError([{"path": f"files.{file_name}", "message": message}]) from exc
        except StorageError as exc:
            raise StorageUnavailableError(f"the upload could not be completed, try again: {exc}") from exc


def _exists(store: ArtifactStore, key: str) -> bool:
    try:
        store.size(key)
    except FileNotFoundError:
        return False
    return True


def _register_folder(
    session: Session, owner_id: int, name: str, folder: str, store: ArtifactStore, max_bytes: int, max_total: int
) -> Dataset:
    """Check the completed folder (sizes first, then the first pass a job makes) and record it; a
    folder that fails is deleted whole, whatever the failure."""
    try:
        files = store.list_keys(folder)
        check_file_sizes(
            {key[len(folder) :]: store.size(key) for key in files}, max_file_bytes=max_bytes, max_total_bytes=max_total
        )
        contents = store.within(folder)
        summary = summarise_shards(f"{name}/", lambda _: contents, max_bytes=max_bytes)
        return record_dataset(session, owner_id=owner_id, name=name, key=folder, summary=summary, store=store)
    except DataError as exc:
        delete_objects(store, dataset_objects(store, folder))
        raise InvalidRequestError([{"path": "files", "message": str(exc)}]) from exc
    except StorageError as exc:
        delete_objects(store, dataset_objects(store, folder))
        raise StorageUnavailableError(f"the upload could not be read back, start again: {exc}") from exc
    except BaseException:
        delete_objects(store, dataset_objects(store, folder))
        raise


def abort_upload(session: Session, *, owner_id: int, upload_id: int, store: ArtifactStore) -> None:
    """Drop an upload that will not be completed, with the parts S3 holds for it."""
    s3 = _multipart(store)
    upload = _find_upload(session, owner_id=owner_id, upload_id=upload_id, lock=True)
    try:
        if upload.files is None:
            _abort_files(s3, "", [{"name": upload.key, "multipart_id": upload.multipart_id}])
        else:
            _abort_files(s3, upload.key, upload.files)
            store.delete(store.list_keys(upload.key))  # files an earlier, failed completion assembled
    except StorageError as exc:
        session.rollback()
        raise StorageUnavailableError(f"the upload could not be aborted, try again: {exc}") from exc
    session.delete(upload)
    session.commit()
