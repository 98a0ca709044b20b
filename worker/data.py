"""How a job reaches its data: only what its owner may read, through the one storage module.

A spec names an uploaded dataset (``dataset:<id>``, resolved to the owner's own stored object) or a
raw ``uri``, which is read only when it lies under one of the server's allowed prefixes
(``MMKD_DATA_ALLOW``), checked here again because the API's check may be bypassed (a spec written
to the database by hand, an allow-list changed since submit). Refusals never say whether the
object exists or what it holds.
"""

from __future__ import annotations

from functools import partial

from sqlalchemy.orm import Session, sessionmaker

from core.data.arrays import DataReader, read_local_or_s3
from core.errors import DataError
from storage.store import ArtifactStore, is_allowed
from worker.config import WorkerSettings

NOT_ALLOWED = "not under a data prefix this server allows (MMKD_DATA_ALLOW); upload it with POST /v1/datasets"


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
        if not is_allowed(ref, settings.data_allow):
            raise DataError(ref, NOT_ALLOWED)
        return read_raw(ref, max_bytes=max_bytes)

    return read


def read_uploaded(
    store: ArtifactStore, sessions: sessionmaker[Session], ref: str, *, owner_id: int, max_bytes: int | None
) -> bytes:
    """The bytes of the owner's uploaded dataset ``dataset:<id>``."""
    raise DataError(ref, "uploaded datasets are not readable yet")
