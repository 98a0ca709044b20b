"""Another owner's job is a 404 on every endpoint and never shows in listings."""

from __future__ import annotations

import pytest
from api_helpers import Api

from jobs import lifecycle
from jobs.models import Job


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("get", ""),
        ("post", "/cancel"),
        ("get", "/events"),
        ("get", "/metrics"),
        ("get", "/artifacts"),
        ("get", "/artifacts/{artifact_id}/download"),
    ],
)
def test_foreign_job_is_404(api: Api, method: str, suffix: str) -> None:
    alice, bob = api.new_key("alice"), api.new_key("bob")
    job_id = api.submit(alice).json()["id"]
    artifact = lifecycle.record_artifact(
        api.session,
        job_id=job_id,
        key=f"jobs/{job_id}/report/metrics.csv",
        kind="report",
        size_bytes=1,
        checksum=None,
    )
    api.session.commit()
    url = f"/v1/jobs/{job_id}{suffix}".format(artifact_id=artifact.id)
    theirs = getattr(api.client, method)(url, headers=api.auth(bob))
    assert theirs.status_code == 404
    assert theirs.json()["detail"] == f"no job {job_id}"
    job = api.session.get(Job, job_id, populate_existing=True)
    assert job is not None and job.status == "queued"  # bob's cancel touched nothing
    mine = getattr(api.client, method)(url, headers=api.auth(alice))
    # alice reaches the job; the download is a 404 only because no file was written to the store
    assert mine.is_success or (suffix.endswith("download") and "file is missing" in mine.json()["detail"])


def test_listing_shows_only_own_jobs(api: Api) -> None:
    alice, bob = api.new_key("alice"), api.new_key("bob")
    mine = {api.submit(alice).json()["id"] for _ in range(3)}
    theirs = {api.submit(bob).json()["id"] for _ in range(2)}
    listed = {j["id"] for j in api.client.get("/v1/jobs", headers=api.auth(alice)).json()["items"]}
    assert listed == mine and not listed & theirs


def test_same_idempotency_key_is_per_owner(api: Api) -> None:
    alice, bob = api.new_key("alice"), api.new_key("bob")
    first = api.submit(alice, idempotency_key="k1")
    second = api.submit(bob, idempotency_key="k1")
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert second.json()["owner"] == "bob"
