"""How a job reaches its data: only what its owner may read, through the one storage module.

A spec names an uploaded dataset (``dataset:<id>``, resolved to the owner's own stored object, or
for a sharded upload to its folder, opened as ``dataset:<id>/``) or a raw ``uri``, which is read
only when it lies under one of the server's allowed prefixes (``MMKD_DATA_ALLOW``), checked here
again because the API's check may be bypassed (a spec written to the database by hand, an allow-list
changed since submit). Refusals never say whether the object exists or what it holds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.data.arrays import DataReader, read_local_or_s3
from core.data.shards import LocalOrS3Folders, ShardOpener
from core.errors import DataError
from core.spec import DatasetSpec
from jobs.models import Dataset
from storage.store import ArtifactStore, is_allowed, open_store
from worker.config import WorkerSettings

NOT_ALLOWED = "not under a data prefix this server allows (MMKD_DATA_ALLOW); upload it with POST /v1/datasets"
#: One reason for a dataset deleted since submit, another owner's and one that never existed.
NO_DATASET = "no such dataset of this job's owner (deleted since the job was submitted?); upload it again"
FILE_MISSING = "the dataset's stored file is missing; upload it again"


def job_reader(
    settings: WorkerSettings, store: ArtifactStore, sessions: sessionmaker[Session], *, owner_id: int
) -> DataReader:
    """The reader for one job of ``owner_id``."""
    read_raw = partial(
        read_local_or_s3,
        endpoint_url=settings.s3_endpoint_url,
        max_attempts=settings.storage_max_attempts,
        timeout_s=settings.storage_timeout_seconds,
    )

    def read(ref: str, *, max_bytes: int | None) -> bytes:
        if ref.startswith("dataset:"):
            return read_uploaded(store, sessions, ref, owner_id=owner_id, max_bytes=max_bytes)
        # The service's own store is never raw data, whatever the allow-list: it holds every
        # owner's uploads, checkpoints and models.
        if not is_allowed(ref, settings.data_allow) or is_allowed(ref, [settings.resolved_storage_url]):
            raise DataError(ref, NOT_ALLOWED)
        return read_raw(ref, max_bytes=max_bytes)

    return read


@dataclass(frozen=True)
class AllowedFolders:
    """The opener of a job's sharded folders and prefixes: only under the allowed prefixes, never the
    service's own store. Picklable: a launcher's ranks reopen the folder with it."""

    allow: tuple[str, ...]
    service_store: str
    endpoint_url: str | None
    max_attempts: int
    timeout_s: float

    def __call__(self, uri: str) -> ArtifactStore:
        if uri.startswith("dataset:"):  # an upload opens through its own UploadedFolder only
            raise DataError(uri, NOT_ALLOWED)
        folder, store = uri.rstrip("/"), self.service_store.rstrip("/")
        # neither inside the service's store nor holding it (its root, or a folder above it)
        overlaps = is_allowed(f"{folder}/x", [store]) or is_allowed(f"{store}/x", [folder])
        if not is_allowed(uri, list(self.allow)) or overlaps:
            raise DataError(uri, NOT_ALLOWED)
        return LocalOrS3Folders(self.endpoint_url, self.max_attempts, self.timeout_s)(uri)


def job_folders(settings: WorkerSettings) -> AllowedFolders:
    """The sharded-folder opener of the jobs this worker runs."""
    return AllowedFolders(
        tuple(settings.data_allow),
        settings.resolved_storage_url,
        settings.s3_endpoint_url,
        settings.storage_max_attempts,
        settings.storage_timeout_seconds,
    )


@dataclass(frozen=True)
class UploadedFolder:
    """The opener of one job's sharded upload: ``ref`` (``dataset:<id>/``) and nothing else opens
    the folder ``key`` of the service's store. Picklable, like :class:`AllowedFolders`."""

    ref: str
    storage_url: str
    key: str
    endpoint_url: str | None
    max_attempts: int
    timeout_s: float

    def __call__(self, uri: str) -> ArtifactStore:
        if uri != self.ref:
            raise DataError(uri, NOT_ALLOWED)
        store = open_store(
            self.storage_url, endpoint_url=self.endpoint_url, max_attempts=self.max_attempts, timeout_s=self.timeout_s
        )
        return store.within(self.key)


def job_dataset(
    settings: WorkerSettings, sessions: sessionmaker[Session], spec: DatasetSpec, *, owner_id: int
) -> tuple[DatasetSpec, ShardOpener]:
    """The dataset spec to prepare and the opener of its folders: a sharded upload of ``owner_id``
    becomes the folder ``dataset:<id>/`` that only its own opener opens; anything else is as given,
    with the allow-listed folders."""
    if spec.id is None:
        return spec, job_folders(settings)
    with sessions() as session:
        query = select(Dataset.key).where(Dataset.id == spec.id, Dataset.owner_id == owner_id)
        key = session.scalars(query).one_or_none()
    if key is None or not key.endswith("/"):
        return spec, job_folders(settings)  # one file (read through job_reader), or gone (it says so)
    ref = f"dataset:{spec.id}/"
    opener = UploadedFolder(
        ref,
        settings.resolved_storage_url,
        key,
        settings.s3_endpoint_url,
        settings.storage_max_attempts,
        settings.storage_timeout_seconds,
    )
    return spec.model_copy(update={"id": None, "uri": ref}), opener


def read_uploaded(
    store: ArtifactStore, sessions: sessionmaker[Session], ref: str, *, owner_id: int, max_bytes: int | None
) -> bytes:
    """The bytes of the owner's uploaded dataset ``dataset:<id>``: the row must belong to
    ``owner_id``, the object's size is checked before it is read and its SHA-256 after."""
    dataset_id = ref.removeprefix("dataset:")
    if not dataset_id.isdigit():
        raise DataError(ref, NO_DATASET)
    with sessions() as session:
        query = select(Dataset.key, Dataset.sha256).where(Dataset.id == int(dataset_id), Dataset.owner_id == owner_id)
        row = session.execute(query).one_or_none()
    if row is None:
        raise DataError(ref, NO_DATASET)
    key, sha256 = row
    try:
        size = store.size(key)
        if max_bytes is not None and size > max_bytes:
            raise DataError(ref, f"the data is {size} bytes, over the limit of {max_bytes} bytes")
        payload = store.get_bytes(key)
    except FileNotFoundError as exc:
        raise DataError(ref, FILE_MISSING) from exc
    if hashlib.sha256(payload).hexdigest() != sha256:
        raise DataError(ref, "the dataset's stored file does not match the checksum recorded at upload")
    return payload
