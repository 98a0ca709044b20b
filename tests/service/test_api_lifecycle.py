"""Job lifecycle through the API and the transition helpers, on PostgreSQL and SQLite."""

from __future__ import annotations

import pytest
from api_helpers import Api

from service.exceptions import InvalidTransitionError
from service.jobs import service as jobs_service
from service.jobs.models import Job

pytestmark = pytest.mark.parametrize("backend", ["pg", "sqlite"], indirect=True)


def _job(api: Api, job_id: int) -> Job:
    job = api.session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


def test_submit_returns_queued_job_with_validated_spec(api: Api) -> None:
    response = api.submit(api.new_key())
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["seed"] == 7
    assert job["attempts"] == 0 and job["max_attempts"] == 3
    assert job["spec"]["model"]["hidden_dim"] == 128  # defaults filled in
    assert len(job["spec_hash"]) == 64
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["links"]["events"] == f"/v1/jobs/{job['id']}/events"


def test_queued_job_cancels_at_once(api: Api) -> None:
    token = api.new_key()
    job_id = api.submit(token).json()["id"]
    response = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth(token))
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    again = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth(token))
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"


def test_running_job_goes_to_cancelling_then_worker_finishes(api: Api) -> None:
    token = api.new_key()
    job_id = api.submit(token).json()["id"]
    job = _job(api, job_id)
    jobs_service.transition(api.session, job=job, to_status="running", reason="worker w1")
    api.session.commit()
    response = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth(token))
    assert response.json()["status"] == "cancelling"
    assert (
        api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth(token)).json()["status"] == "cancelling"
    )
    job = _job(api, job_id)
    jobs_service.transition(api.session, job=job, to_status="cancelled", reason="stopped at step 12")
    api.session.commit()
    body = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(token)).json()
    assert body["status"] == "cancelled" and body["status_reason"] == "stopped at step 12"
    kinds = [
        e["kind"]
        for e in api.client.get(f"/v1/jobs/{job_id}/events", headers=api.auth(token)).json()["items"]
    ]
    assert kinds == ["created", "enqueued", "started", "cancel_requested", "cancelled"]


def test_full_run_progress_metrics_result(api: Api) -> None:
    token = api.new_key()
    job_id = api.submit(token).json()["id"]
    job = _job(api, job_id)
    jobs_service.transition(api.session, job=job, to_status="running")
    jobs_service.update_progress(
        api.session, job=job, epoch=1, step=10, total_epochs=2, total_steps=20, eta_seconds=5
    )
    for step in (5, 10):
        values = {"train/loss": 1.0 / step, "val/student_acc": step / 20}
        jobs_service.record_metrics(api.session, job=job, step=step, epoch=step // 10, values=values)
    jobs_service.record_event(api.session, job_id=job_id, kind="resumed", reason="from checkpoint step-5")
    job.result = {"student": {"accuracy": 0.9}}
    jobs_service.transition(api.session, job=job, to_status="succeeded")
    api.session.commit()
    body = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(token)).json()
    assert body["status"] == "succeeded"
    assert body["progress"] == {
        "epoch": 1,
        "step": 10,
        "total_epochs": 2,
        "total_steps": 20,
        "eta_seconds": 5.0,
    }
    assert body["latest_metrics"] == {"train/loss": 0.1, "val/student_acc": 0.5}
    assert body["result"] == {"student": {"accuracy": 0.9}}
    assert body["started_at"] and body["finished_at"]
    url = f"/v1/jobs/{job_id}/metrics"
    everything = api.client.get(url, headers=api.auth(token)).json()["items"]
    assert [(p["step"], p["name"]) for p in everything] == [
        (5, "train/loss"),
        (5, "val/student_acc"),
        (10, "train/loss"),
        (10, "val/student_acc"),
    ]
    some = api.client.get(url, params={"names": "val/student_acc", "since_step": 10}, headers=api.auth(token))
    assert some.json()["items"] == [{"step": 10, "epoch": 1, "name": "val/student_acc", "value": 0.5}]
    events = api.client.get(f"/v1/jobs/{job_id}/events", headers=api.auth(token)).json()["items"]
    assert [e["kind"] for e in events][-2:] == ["resumed", "succeeded"]
    assert events[-2]["reason"] == "from checkpoint step-5"


def test_terminal_states_allow_no_transition(api: Api) -> None:
    token = api.new_key()
    job = _job(api, api.submit(token).json()["id"])
    jobs_service.transition(api.session, job=job, to_status="failed", reason="non-finite loss at step 3")
    for target in ("queued", "running", "cancelling", "succeeded", "cancelled"):
        with pytest.raises(InvalidTransitionError):
            jobs_service.transition(api.session, job=job, to_status=target)


def test_requeue_after_lost_lease_clears_lease(api: Api) -> None:
    token = api.new_key()
    job = _job(api, api.submit(token).json()["id"])
    jobs_service.transition(api.session, job=job, to_status="running")
    job.lease_owner = "w1"
    jobs_service.transition(api.session, job=job, to_status="queued", reason="lease expired")
    assert job.lease_owner is None and job.status == "queued"
