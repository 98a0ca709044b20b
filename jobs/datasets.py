"""Data a job may train on: the owner's uploaded datasets, the built-ins, and raw URIs only under the
server's allowed prefixes. No message tells whether another owner's object exists or what it holds.

An uploaded file is validated once, from a local file, with the same torch-free checks the loader
runs (``core.data.summary.summarise_npz``); the object is written under the owner's prefix first and
the row recorded after, in one short transaction, so a row always names a complete, valid object
and no transaction stays open while bytes move. A sharded dataset (``jobs.dataset_uploads``) is a
folder of objects under the owner's prefix, its row's key the folder (ending in ``/``).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.data.summary import FileSummary, summarise_npz
from core.errors import DataError, StorageError
from core.spec import PROBE_NEEDS_ONE_FILE, WHOLE_SPLIT_METHODS, JobSpec, method_needs_one_file
from jobs.errors import ConflictError, InvalidRequestError, NotFoundError, ServiceError
from jobs.models import Dataset, Job
from jobs.status import JobStatus
from storage.store import ArtifactStore, is_allowed

log = logging.getLogger(__name__)

URI_NOT_ALLOWED = (
    "raw data URIs are accepted only under the prefixes this server allows (MMKD_DATA_ALLOW); "
    "upload the file with POST /v1/datasets and name it by dataset.id"
)
#: One answer for a dataset of another owner and for none at all.
NO_SUCH_DATASET = "you have no dataset with this id (GET /v1/datasets lists yours)"
#: Jobs in these states will still read their dataset.
ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)


class PayloadTooLargeError(ServiceError):
    """A dataset larger than ``MMKD_MAX_DATASET_BYTES``."""

    status = 413
    title = "Payload too large"


class StorageUnavailableError(ServiceError):
    """The store could not be reached after retries; nothing was recorded."""

    status = 503
    title = "Storage unavailable"


def too_large(max_bytes: int) -> PayloadTooLargeError:
    """The one refusal of an oversized dataset."""
    return PayloadTooLargeError(f"a dataset may hold at most {max_bytes} bytes (MMKD_MAX_DATASET_BYTES)")


def new_dataset_key(owner_id: int) -> str:
    """A fresh key under the owner's prefix (named before the row exists, so no transaction waits
    on the upload)."""
    return f"datasets/{owner_id}/{uuid.uuid4().hex}.npz"


def get_dataset(session: Session, *, owner_id: int, dataset_id: int) -> Dataset:
    """The owner's dataset; another owner's is indistinguishable from a missing one."""
    query = select(Dataset).where(Dataset.id == dataset_id, Dataset.owner_id == owner_id)
    dataset = session.scalars(query).one_or_none()
    if dataset is None:
        raise NotFoundError(f"no dataset {dataset_id}")
    return dataset


def list_datasets(
    session: Session, *, owner_id: int, limit: int, before_id: int | None
) -> tuple[list[Dataset], int | None]:
    """Newest first; returns the page and the id to continue before."""
    query = select(Dataset).where(Dataset.owner_id == owner_id)
    if before_id is not None:
        query = query.where(Dataset.id < before_id)
    rows = list(session.scalars(query.order_by(Dataset.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    return page, (page[-1].id if len(rows) > limit else None)


def validate_file(path: Path, *, max_bytes: int) -> FileSummary:
    """Check a whole uploaded file; a bad one is a 422 naming the array (path ``file``)."""
    if path.stat().st_size > max_bytes:
        raise too_large(max_bytes)
    try:
        return summarise_npz("the uploaded file", path, max_bytes=max_bytes)
    except DataError as exc:
        raise InvalidRequestError([{"path": "file", "message": str(exc)}]) from exc


def create_dataset(
    session: Session, *, owner_id: int, name: str, path: Path, store: ArtifactStore, max_bytes: int
) -> Dataset:
    """Validate the local file ``path``, store it under the owner's prefix, then record it."""
    summary = validate_file(path, max_bytes=max_bytes)
    return store_dataset(session, owner_id=owner_id, name=name, path=path, summary=summary, store=store)


def store_dataset(
    session: Session, *, owner_id: int, name: str, path: Path, summary: FileSummary, store: ArtifactStore
) -> Dataset:
    """Write the validated file under a new key, then record it in one short transaction (with
    whatever else the session holds); a failed commit removes the object again."""
    key = new_dataset_key(owner_id)
    try:
        store.put_file(key, path)
    except StorageError as exc:
        raise StorageUnavailableError(f"the dataset could not be stored, try again: {exc}") from exc
    return record_dataset(session, owner_id=owner_id, name=name, key=key, summary=summary, store=store)


def record_dataset(
    session: Session, *, owner_id: int, name: str, key: str, summary: FileSummary, store: ArtifactStore
) -> Dataset:
    """Record the stored, validated dataset at ``key`` (a file, or a folder ending in ``/``) in one short
    transaction; a failed commit removes its objects again."""
    dataset = Dataset(
        owner_id=owner_id,
        name=name,
        key=key,
        size_bytes=summary.size_bytes,
        sha256=summary.sha256,
        n_samples=summary.n_samples,
        summary=summary.as_json(),
    )
    session.add(dataset)
    try:
        session.commit()
    except Exception:
        session.rollback()
        delete_objects(store, dataset_objects(store, key))
        raise
    return dataset


def delete_dataset(session: Session, *, owner_id: int, dataset_id: int, store: ArtifactStore) -> None:
    """Remove the row, then the object. A dataset that queued or running jobs will read is a 409."""
    query = select(Dataset).where(Dataset.id == dataset_id, Dataset.owner_id == owner_id).with_for_update()
    dataset = session.scalars(query).one_or_none()
    if dataset is None:
        raise NotFoundError(f"no dataset {dataset_id}")
    users = jobs_reading(session, owner_id=owner_id, dataset_id=dataset_id)
    if users:
        session.rollback()
        raise ConflictError(
            f"dataset {dataset_id} is used by queued or running jobs {users}; cancel them or let them finish first"
        )
    key = dataset.key
    session.delete(dataset)
    session.commit()
    delete_objects(store, dataset_objects(store, key))


def jobs_reading(session: Session, *, owner_id: int, dataset_id: int) -> list[int]:
    """Ids of the owner's jobs that are not finished and name ``dataset_id`` in their spec."""
    query = select(Job.id).where(
        Job.owner_id == owner_id,
        Job.status.in_(ACTIVE_STATUSES),
        Job.spec[("dataset", "id")].as_integer() == dataset_id,
    )
    return list(session.scalars(query.order_by(Job.id)))


def dataset_objects(store: ArtifactStore, key: str) -> list[str]:
    """The objects of the dataset at ``key``: the file, or every object under a sharded one's folder
    (none when the folder cannot be listed: they are logged as left behind)."""
    if not key.endswith("/"):
        return [key]
    try:
        return store.list_keys(key)
    except StorageError:
        log.warning("could not list %s in the store; remove its objects by hand", key, exc_info=True)
        return []


def delete_objects(store: ArtifactStore, keys: list[str]) -> None:
    """Best effort: an object left behind is unreachable (no row names it), so log it and go on."""
    if not keys:
        return
    try:
        store.delete(keys)
    except StorageError:
        log.warning("could not delete %s from the store; remove it by hand", keys, exc_info=True)


def check_data_reference(session: Session, *, owner_id: int, spec: JobSpec, data_allow: list[str]) -> None:
    """Refuse a spec whose data its owner may not use (422 naming the field), or that asks a sharded
    dataset (a folder ``uri``, or an uploaded folder) for what only one file allows.

    An uploaded dataset is read under a shared row lock, so a concurrent delete waits for this
    submit and then sees its job.
    """
    uri = spec.dataset.uri
    if uri is not None and not is_allowed(uri, data_allow):
        raise InvalidRequestError([{"path": "dataset.uri", "message": URI_NOT_ALLOWED}])
    if spec.dataset.id is None:
        errors = _streaming_errors(spec) if uri is not None and uri.endswith("/") else []
        if errors:
            raise InvalidRequestError(errors)
        return
    query = select(Dataset).where(Dataset.id == spec.dataset.id, Dataset.owner_id == owner_id)
    dataset = session.scalars(query.with_for_update(read=True)).one_or_none()
    if dataset is None:
        raise InvalidRequestError([{"path": "dataset.id", "message": NO_SUCH_DATASET}])
    errors = _modality_errors(spec, dataset)
    if dataset.summary.get("shards"):
        errors += _streaming_errors(spec)
    if spec.task != "retrieval" and dataset.summary.get("label") is None:
        errors.append({"path": "task", "message": f"task {spec.task!r} needs labels; dataset {dataset.id} has none"})
    if errors:
        raise InvalidRequestError(errors)


def _streaming_errors(spec: JobSpec) -> list[dict[str, str]]:
    """What a streamed (sharded) dataset cannot do: the probe, and methods that read the whole
    training split at once (the trainer refuses them too, after the data's passes)."""
    errors = []
    if spec.kind == "probe":
        errors.append({"path": "kind", "message": PROBE_NEEDS_ONE_FILE})
    if spec.method.name in WHOLE_SPLIT_METHODS:
        errors.append({"path": "method.name", "message": method_needs_one_file(spec.method.name)})
    return errors


def _modality_errors(spec: JobSpec, dataset: Dataset) -> list[dict[str, str]]:
    have = sorted(dataset.summary["modalities"])
    wanted = {"primary": spec.dataset.primary, "auxiliary": spec.dataset.auxiliary}
    if spec.dataset.retrieval_target is not None:
        wanted["retrieval_target"] = [spec.dataset.retrieval_target]
    errors = []
    for field, names in wanted.items():
        missing = [name for name in names if name not in have]
        if missing:
            message = f"modality {missing} is not in dataset {dataset.id}; it has {have}"
            errors.append({"path": f"dataset.{field}", "message": message})
    return errors
