"""Data a job may train on: the owner's uploaded datasets, the built-ins, and raw URIs only under the
server's allowed prefixes. No message tells whether another owner's object exists."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.spec import JobSpec
from jobs.errors import InvalidRequestError
from storage.store import is_allowed

URI_NOT_ALLOWED = (
    "raw data URIs are accepted only under the prefixes this server allows (MMKD_DATA_ALLOW); "
    "upload the file with POST /v1/datasets and name it by dataset.id"
)


def check_data_reference(session: Session, *, owner_id: int, spec: JobSpec, data_allow: list[str]) -> None:
    """Refuse a spec whose data its owner may not use (422 naming the field)."""
    uri = spec.dataset.uri
    if uri is not None and not is_allowed(uri, data_allow):
        raise InvalidRequestError([{"path": "dataset.uri", "message": URI_NOT_ALLOWED}])
