"""Rows stored before the current rules (a spec or a result the strict models refuse) are read, never a 500.

The rows are written straight to the database, as an older version (or a hand edit) left them; the
API shows such a spec or result exactly as stored (docs/api.md, *Legacy rows*).
"""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import SPEC, Api
from sqlalchemy import update

from jobs import lifecycle
from jobs.models import Job

pytestmark = pytest.mark.parametrize("backend", ["pg", "sqlite"], indirect=True)

#: `train.epochs: true`: JSON's bool where the spec now wants an int (a worker fails it as invalid_spec).
LEGACY_SPEC: dict[str, Any] = {**SPEC, "train": {**SPEC["train"], "epochs": True}}
#: A result from before results were typed per task: no `task`, `validation`, `data`...
LEGACY_RESULT: dict[str, Any] = {"student": {"accuracy": 0.9}}


def _stored_job(api: Api, token: str, **values: Any) -> int:
    """A job submitted through the API, then overwritten in the database with ``values``."""
    job_id: int = api.submit(token).json()["id"]
    api.session.execute(update(Job).where(Job.id == job_id).values(**values))
    api.session.commit()
    return job_id


def test_legacy_spec_is_shown_as_stored_listed_and_cancelled(api: Api) -> None:
    token = api.new_key()
    job_id = _stored_job(api, token, spec=LEGACY_SPEC)
    got = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(token))
    assert got.status_code == 200, got.text
    assert got.json()["spec"] == LEGACY_SPEC  # as stored: no defaults filled, the bool kept
    listed = api.client.get("/v1/jobs", headers=api.auth(token))
    assert listed.status_code == 200, listed.text
    assert [item["id"] for item in listed.json()["items"]] == [job_id]
    cancelled = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth(token))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["spec"] == LEGACY_SPEC


def test_legacy_result_is_shown_as_stored(api: Api) -> None:
    token = api.new_key()
    job_id = _stored_job(api, token)
    lifecycle.transition(api.session, job_id=job_id, to="running")
    lifecycle.transition(api.session, job_id=job_id, to="succeeded", values={"result": LEGACY_RESULT})
    api.session.commit()
    got = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(token))
    assert got.status_code == 200, got.text
    assert got.json()["result"] == LEGACY_RESULT
    assert got.json()["spec"]["model"]["hidden_dim"] == 128  # a valid spec is still read typed, defaults filled
    finished = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth(token))
    assert finished.status_code == 409, finished.text
    assert api.client.get("/v1/jobs", headers=api.auth(token)).status_code == 200


def test_legacy_spec_and_result_together(api: Api) -> None:
    token = api.new_key()
    job_id = _stored_job(api, token, spec=LEGACY_SPEC, status="succeeded", result=LEGACY_RESULT)
    got = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(token))
    assert got.status_code == 200, got.text
    assert (got.json()["spec"], got.json()["result"]) == (LEGACY_SPEC, LEGACY_RESULT)
