"""Job lifecycle through the API and the transition helpers, on PostgreSQL and SQLite."""

from __future__ import annotations

import pytest
from api_helpers import Api
from sqlalchemy import update
from tests_support import add_metric_points

from jobs import lifecycle
from jobs.errors import InvalidTransitionError
from jobs.models import Job
from jobs.status import JobStatus
from service.jobs.results import RESULT_EXAMPLE

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
    lifecycle.transition(api.session, job_id=job.id, to="running", reason="worker w1")
    api.session.commit()
    response = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth(token))
    assert response.json()["status"] == "cancelling"
    assert api.client.post(f"/v1/jobs/{job_id}/cancel", headers=api.auth(token)).json()["status"] == "cancelling"
    job = _job(api, job_id)
    lifecycle.transition(api.session, job_id=job.id, to="cancelled", reason="stopped at step 12")
    api.session.commit()
    body = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(token)).json()
    assert body["status"] == "cancelled" and body["status_reason"] == "stopped at step 12"
    kinds = [e["kind"] for e in api.client.get(f"/v1/jobs/{job_id}/events", headers=api.auth(token)).json()["items"]]
    assert kinds == ["created", "enqueued", "started", "cancel_requested", "cancelled"]


def test_full_run_progress_metrics_result(api: Api) -> None:
    token = api.new_key()
    job_id = api.submit(token).json()["id"]
    job = _job(api, job_id)
    lifecycle.transition(api.session, job_id=job.id, to="running")
    progress = {"epoch": 1, "step": 10, "total_epochs": 2, "total_steps": 20, "eta_seconds": 5}
    api.session.execute(update(Job).where(Job.id == job_id).values(**progress))
    for step in (5, 10):
        values = {"train/loss": 1.0 / step, "val/student_acc": step / 20}
        add_metric_points(api.session, job_id=job_id, step=step, epoch=step // 10, values=values)
    lifecycle.record_event(api.session, job_id=job_id, kind="resumed", reason="from checkpoint step-5")
    lifecycle.transition(api.session, job_id=job.id, to="succeeded", values={"result": RESULT_EXAMPLE})
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
    assert body["result"] == RESULT_EXAMPLE
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
    assert lifecycle.transition(api.session, job_id=job.id, to="failed", reason="non-finite loss at step 3") == 0
    for target in ("queued", "running", "cancelling", "succeeded", "cancelled"):
        assert lifecycle.transition(api.session, job_id=job.id, to=target) is None
        with pytest.raises(InvalidTransitionError):
            lifecycle.transition(api.session, job_id=job.id, to=target, expect={"failed"})
    api.session.commit()
    assert _job(api, job.id).status == JobStatus.FAILED


def test_a_transition_matches_only_the_expected_status_and_lease(api: Api) -> None:
    job_id = api.submit(api.new_key()).json()["id"]
    assert lifecycle.transition(api.session, job_id=job_id, to="cancelled", expect={"running"}) is None
    assert lifecycle.transition(api.session, job_id=job_id, to="running", values={"lease_owner": "w1"}) == 0
    assert lifecycle.transition(api.session, job_id=job_id, to="succeeded", lease_owner="w2") is None
    assert lifecycle.transition(api.session, job_id=job_id, to="succeeded", lease_owner="w1") == 0
    api.session.commit()
    job = _job(api, job_id)
    assert job.status == JobStatus.SUCCEEDED and job.lease_owner is None and job.finished_at is not None


def test_requeue_after_lost_lease_clears_lease(api: Api) -> None:
    token = api.new_key()
    job = _job(api, api.submit(token).json()["id"])
    lifecycle.transition(api.session, job_id=job.id, to="running", values={"lease_owner": "w1"})
    assert _job(api, job.id).lease_owner == "w1"
    lifecycle.transition(api.session, job_id=job.id, to="queued", reason="lease expired")
    job = _job(api, job.id)
    assert job.lease_owner is None and job.status == "queued"


PROBE_RESULT: dict[str, object] = {
    "kind": "probe",
    "name": "probe",
    "task": "classification",
    "dataset": "mfeat",
    "seed": 0,
    "spec_hash": "1" * 64,
    "data": RESULT_EXAMPLE["data"],
    "steps": 400,
    "primary": ["fou", "zer"],
    "auxiliary": ["kar"],
    "teacher_epochs": 40,
    "teacher_val": {"accuracy": 0.98},
    "student_val": {"accuracy": 0.8},
    "reachable_val": {"accuracy": 0.88},
    "room": 0.08,
    "channels": 64,
    "sets": {
        "all primary": {
            "modalities": ["fou", "zer"],
            "general_share": 0.9,
            "decisive_general_share": 0.95,
            "weighted_r2": 0.8,
        },
        "fou": {"modalities": ["fou"], "general_share": 0.7, "decisive_general_share": None, "weighted_r2": 0.6},
    },
    "weighted_r2": 0.8,
    "verdict": "can transfer",
    "seconds": 12.5,
}


def test_a_probe_jobs_result_is_served_typed_as_a_probe(api: Api) -> None:
    from service.jobs.results import ProbeResult
    from service.jobs.schemas import JobOut

    token = api.new_key()
    job_id = api.submit(token).json()["id"]
    lifecycle.transition(api.session, job_id=job_id, to="running")
    lifecycle.transition(api.session, job_id=job_id, to="succeeded", values={"result": PROBE_RESULT})
    api.session.commit()
    body = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(token)).json()
    assert body["result"] == PROBE_RESULT
    assert isinstance(JobOut.of_job(_job(api, job_id), owner="o").result, ProbeResult)
