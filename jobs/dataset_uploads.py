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
import re
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from core.data.shards import ANNOTATIONS
from core.data.summary import summarise_shards
from core.errors import DataError, StorageError
from core.spec import MODALITY_NAME
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
MAX_UPLOAD_FILES = 500  # files of one sharded upload: its URLs (MAX_PARTS + files) and completion body stay small
URL_SECONDS = 3600
STALE_CLAIM = dt.timedelta(hours=1)  # a completion or abort holding an upload longer than this has died


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
        read_whole = name.endswith(".npz") or (name.endswith(".npy") and name[:-4] in ANNOTATIONS)
        if read_whole and size > max_file_bytes:
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
    _check_file_names([file_name for file_name, _ in files])
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


def _check_file_names(names: list[str]) -> None:
    """Each file once, one layout, and for ``.npy`` a modality's or an annotation's name, with a modality."""
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise InvalidRequestError([{"path": "files", "message": f"file {duplicates[0]!r} is named more than once"}])
    if len({name.rsplit(".", 1)[-1] for name in names}) > 1:
        message = "mixes .npz shards and .npy arrays; a sharded dataset is one layout or the other"
        raise InvalidRequestError([{"path": "files", "message": message}])
    if names[0].endswith(".npy"):
        stems = [name[:-4] for name in names]
        wrong = [stem for stem in stems if stem not in ANNOTATIONS and not re.fullmatch(MODALITY_NAME, stem)]
        if wrong:
            named = f"{wrong[0]}.npy"
            message = f"file {named!r}: an .npy is named after its array (a modality, label, split or class_names)"
            raise InvalidRequestError([{"path": "files", "message": message}])
        if set(stems) <= set(ANNOTATIONS):
            raise InvalidRequestError([{"path": "files", "message": "holds no modality's .npy, only annotations"}])


def _abort_files(s3: MultipartStore, folder: str, files: list[dict[str, object]]) -> None:
    """Drop each file's multipart upload; one S3 no longer knows is already gone."""
    for entry in files:
        with contextlib.suppress(ValueError):
            s3.abort_multipart(folder + str(entry["name"]), str(entry["multipart_id"]))


def _find_upload(session: Session, *, owner_id: int, upload_id: int) -> DatasetUpload:
    query = select(DatasetUpload).where(DatasetUpload.id == upload_id, DatasetUpload.owner_id == owner_id)
    upload = session.scalars(query).one_or_none()
    if upload is None:
        raise NotFoundError(f"no upload {upload_id}")
    return upload


def _claim(session: Session, *, owner_id: int, upload_id: int) -> None:
    """Take the upload for one completion or abort, in a short transaction only one caller wins (no
    row lock is held while bytes move); 409 while another holds it, 404 for none of the owner's. A
    claim older than ``STALE_CLAIM`` was left by a process that died and may be taken again."""
    now = utcnow()
    taken = session.execute(
        update(DatasetUpload)
        .where(
            DatasetUpload.id == upload_id,
            DatasetUpload.owner_id == owner_id,
            or_(DatasetUpload.claimed_at.is_(None), DatasetUpload.claimed_at < now - STALE_CLAIM),
        )
        .values(claimed_at=now)
    )
    session.commit()
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        _find_upload(session, owner_id=owner_id, upload_id=upload_id)  # 404 when there is none
        session.rollback()
        raise ConflictError(f"upload {upload_id} is being completed or aborted; ask again in a moment")


def _release(session: Session, upload_id: int) -> None:
    """Give the upload back, open for another try."""
    session.rollback()
    session.execute(update(DatasetUpload).where(DatasetUpload.id == upload_id).values(claimed_at=None))
    session.commit()


def _drop(session: Session, upload_id: int) -> None:
    """Forget the upload (its objects are gone or are the dataset's now)."""
    session.rollback()
    session.execute(delete(DatasetUpload).where(DatasetUpload.id == upload_id))
    session.commit()


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
    upload, ``files`` (each file's parts, by name) for a sharded one.

    The upload is claimed first (:func:`_claim`), so a concurrent completion or abort is a 409 and no
    row lock is held while bytes move. Parts S3 refuses, or parts that are not the plan's, are a 422
    that leaves the upload open for another try, and so is an outage (503). A one-file upload's
    temporary object never outlives the call. A sharded upload's folder stays while the upload is
    open; it becomes the dataset, in the transaction that forgets the upload, or is deleted with the
    upload when it fails its checks.
    """
    s3 = _multipart(store)
    upload = _find_upload(session, owner_id=owner_id, upload_id=upload_id)
    name, key, multipart_id, planned = upload.name, upload.key, upload.multipart_id, upload.files
    session.rollback()
    if (planned is None) != (files is None) or (files is None) == (parts is None):
        field_name, kind = ("files", "a folder of shards") if planned is not None else ("parts", "one file")
        message = f"this upload is of {kind}: complete it with {field_name}"
        raise InvalidRequestError([{"path": field_name, "message": message}])
    if planned is not None:
        assert files is not None
        _check_parts_against_plan(planned, files)
    _claim(session, owner_id=owner_id, upload_id=upload_id)
    if planned is not None:
        assert files is not None
        try:
            _complete_files(s3, store, key, planned, files)
        except BaseException:
            _release(session, upload_id)
            raise
        total = max_total_bytes if max_total_bytes is not None else max_bytes
        return _register_folder(session, upload_id, owner_id, name, key, planned, store, max_bytes, total)
    assert parts is not None
    try:
        _complete_part(s3, key, multipart_id, parts)
    except BaseException:
        _release(session, upload_id)
        raise
    try:  # assembled: whatever happens now, the upload is over
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
        _drop(session, upload_id)
        delete_objects(store, [key])


def _complete_part(s3: MultipartStore, key: str, multipart_id: str, parts: list[tuple[int, str]]) -> None:
    try:
        s3.complete_multipart(key, multipart_id, sorted(parts))
    except ValueError as exc:
        raise InvalidRequestError([{"path": "parts", "message": f"{exc}; send every part's number and ETag"}]) from exc
    except StorageError as exc:
        raise StorageUnavailableError(f"the upload could not be completed, try again: {exc}") from exc


def _check_parts_against_plan(planned: list[dict[str, Any]], sent: dict[str, list[tuple[int, str]]]) -> None:
    """Every planned file, each with exactly its parts 1 to n (S3 would assemble any subset)."""
    names = [str(entry["name"]) for entry in planned]
    if sorted(sent) != sorted(names):
        missing, unknown = sorted(set(names) - set(sent)), sorted(set(sent) - set(names))
        message = f"send every file of the upload once: missing {missing[:5]}, not in the upload {unknown[:5]}"
        raise InvalidRequestError([{"path": "files", "message": message}])
    for entry in planned:
        numbers = sorted(number for number, _ in sent[str(entry["name"])])
        if numbers != list(range(1, int(entry["parts"]) + 1)):
            message = f"send parts 1 to {entry['parts']} of {entry['name']!r}, each once (with its ETag)"
            raise InvalidRequestError([{"path": f"files.{entry['name']}", "message": message}])


def _complete_files(
    s3: MultipartStore,
    store: ArtifactStore,
    folder: str,
    planned: list[dict[str, Any]],
    sent: dict[str, list[tuple[int, str]]],
) -> None:
    """Complete each file's multipart upload; a file an earlier try completed is already whole (its
    size is checked against the plan with the others')."""
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
    session: Session,
    upload_id: int,
    owner_id: int,
    name: str,
    folder: str,
    planned: list[dict[str, Any]],
    store: ArtifactStore,
    max_bytes: int,
    max_total: int,
) -> Dataset:
    """Check the completed folder (each file's size against the plan, then the first pass a job makes)
    and record it as the dataset in the transaction that forgets the upload. A folder that fails its
    checks goes with the upload; an outage leaves both for another try."""
    try:
        sizes = {str(entry["name"]): store.size(folder + str(entry["name"])) for entry in planned}
        for entry in planned:
            if sizes[str(entry["name"])] != entry["size_bytes"]:
                raise DataError(
                    f"{name}/{entry['name']}",
                    f"holds {sizes[str(entry['name'])]} bytes; the upload said {entry['size_bytes']}: start again",
                )
        check_file_sizes(sizes, max_file_bytes=max_bytes, max_total_bytes=max_total)
        contents = store.within(folder)
        summary = summarise_shards(f"{name}/", lambda _: contents, max_bytes=max_bytes)
    except (DataError, PayloadTooLargeError, FileNotFoundError) as exc:
        _fail_folder(session, upload_id, store, folder)
        if isinstance(exc, PayloadTooLargeError):
            raise
        raise InvalidRequestError([{"path": "files", "message": str(exc)}]) from exc
    except StorageError as exc:
        _release(session, upload_id)
        raise StorageUnavailableError(f"the upload could not be read back, try again: {exc}") from exc
    except BaseException:
        _release(session, upload_id)
        raise
    session.execute(delete(DatasetUpload).where(DatasetUpload.id == upload_id))
    return record_dataset(session, owner_id=owner_id, name=name, key=folder, summary=summary, store=store)


def _fail_folder(session: Session, upload_id: int, store: ArtifactStore, folder: str) -> None:
    """The upload is over: its folder and its row go."""
    delete_objects(store, dataset_objects(store, folder))
    _drop(session, upload_id)


def abort_upload(session: Session, *, owner_id: int, upload_id: int, store: ArtifactStore) -> None:
    """Drop an upload that will not be completed, with the parts S3 holds for it and, for a sharded
    one, the files a failed completion assembled. Claimed first: during a completion it is a 409."""
    s3 = _multipart(store)
    upload = _find_upload(session, owner_id=owner_id, upload_id=upload_id)
    key, multipart_id, planned = upload.key, upload.multipart_id, upload.files
    session.rollback()
    _claim(session, owner_id=owner_id, upload_id=upload_id)
    try:
        if planned is None:
            _abort_files(s3, "", [{"name": key, "multipart_id": multipart_id}])
        else:
            _abort_files(s3, key, planned)
            store.delete(store.list_keys(key))
    except StorageError as exc:
        _release(session, upload_id)
        raise StorageUnavailableError(f"the upload could not be aborted, try again: {exc}") from exc
    _drop(session, upload_id)
