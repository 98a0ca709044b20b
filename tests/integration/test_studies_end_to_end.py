"""Studies on the real stack: the API (uvicorn) on PostgreSQL, Redis as the broker, moto's S3, and real
Celery workers. A four-trial study prunes its lagging trial and finishes across an API restart; a
cancelled study stops its running trial and asks for no more; a trial whose worker was killed
resumes from its checkpoint as the same job, and the study goes on with it."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from integration_helpers import LONG, events, job_row, running_past
from sqlalchemy import select
from studies_support import PRUNING_STUDY

from jobs.models import Artifact, Job

pytestmark = pytest.mark.slow


@contextmanager
def worker(stack, name: str, *, beat: bool = True) -> Iterator[Any]:
    process = stack.start_worker(name, beat=beat)
    try:
        stack.wait_for(lambda: "ready." in process.log.read_text(), what=f"worker {name} ready")
        yield process
    finally:
        process.stop()


def api(stack) -> httpx.Client:
    return httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30)


def study_jobs(stack, study_id: int) -> list[Job]:
    with stack.sessions() as session:
        return list(session.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.id)))


def finished(stack, study_id: int) -> dict[str, Any] | None:
    with api(stack) as client:
        study = client.get(f"/v1/studies/{study_id}").json()
    return study if study["status"] != "running" else None


def test_a_four_trial_study_prunes_one_and_finishes_across_an_api_restart(stack) -> None:
    with api(stack) as client:
        created = client.post("/v1/studies", json=PRUNING_STUDY, headers={"Idempotency-Key": "lr-1"})
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]
    with worker(stack, "trials"):
        stack.wait_for(lambda: len(study_jobs(stack, study_id)) >= 2, timeout=120, what="the second trial")
        api_process = next(p for p in stack.processes if p.log.name == "api.log")
        api_process.stop()
        stack.processes.remove(api_process)
        stack.start_api()  # a new API process on the same database: the study is all in the rows
        with api(stack) as client:  # and the replay of the create still answers the same study
            replay = client.post("/v1/studies", json=PRUNING_STUDY, headers={"Idempotency-Key": "lr-1"})
        assert (replay.status_code, replay.json()["id"]) == (200, study_id)
        study = stack.wait_for(lambda: finished(stack, study_id), timeout=300, what="the study's end")
    assert study["status"] == "succeeded", study["status_reason"]
    with api(stack) as client:
        trials = client.get(f"/v1/studies/{study_id}/trials").json()["items"]
    assert [trial["state"] for trial in trials] == ["complete", "complete", "complete", "pruned"]
    jobs = study_jobs(stack, study_id)
    assert [(job.trial_number, job.status) for job in jobs] == [
        (0, "succeeded"),
        (1, "succeeded"),
        (2, "succeeded"),
        (3, "pruned"),
        (None, "succeeded"),
    ]
    pruned_events = events(stack, jobs[3].id)
    assert pruned_events[-1].kind == "pruned" and "median pruner after epoch 2" in pruned_events[-1].reason
    assert jobs[3].step < jobs[0].step  # it stopped early: the epochs pruning saved
    result = study["result"]
    winner = result["winner"]["trial"]
    assert winner in (0, 1, 2) and result["student_job_id"] == jobs[4].id
    assert study["links"]["student"] == f"/v1/jobs/{jobs[4].id}/artifacts"
    assert jobs[4].result["student"] == pytest.approx(jobs[winner].result["student"], abs=1e-6)
    assert result["gain"]["over"] == "test_samples" and result["gain"]["resamples"] == 200
    assert result["gain"]["low"] <= result["gain"]["value"] <= result["gain"]["high"]
    with stack.sessions() as session:
        kinds = set(session.scalars(select(Artifact.kind).where(Artifact.job_id == jobs[4].id)))
    assert "student" in kinds


def test_a_cancelled_study_stops_its_running_trial_and_asks_for_no_more(stack) -> None:
    body = {
        "name": "cancelled",
        "base": {**LONG, "method": {"name": "student_only"}, "train": {**LONG["train"], "epochs": 30}},
        "space": [{"path": "train.lr", "type": "float", "low": 0.001, "high": 0.01, "log": True}],
        "trials": 6,
        "parallelism": 2,
    }
    with api(stack) as client:
        study_id = client.post("/v1/studies", json=body).json()["id"]
    with worker(stack, "cancel"):
        first = study_jobs(stack, study_id)[0].id
        stack.wait_for(lambda: running_past(stack, first, 5), timeout=120, what="a running trial")
        with api(stack) as client:
            cancelled = client.post(f"/v1/studies/{study_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        stack.wait_for(
            lambda: all(job.status == "cancelled" for job in study_jobs(stack, study_id)),
            timeout=60,
            what="every trial cancelled",
        )
        time.sleep(3)  # the reaper's passes (every second here) ask for nothing more
    jobs = study_jobs(stack, study_id)
    assert [job.trial_number for job in jobs] == [0, 1]
    assert job_row(stack, first).step < job_row(stack, first).total_steps
    assert events(stack, first)[-1].reason == f"cancelled (study {study_id} cancelled by the owner)" or (
        "cancelled by the owner" in (events(stack, first)[-1].reason or "")
    )


def test_a_trial_whose_worker_died_resumes_as_the_same_job(stack) -> None:
    body = {
        "name": "resumed",
        "base": {**LONG, "method": {"name": "student_only"}, "train": {**LONG["train"], "epochs": 4}},  # 76 steps
        "space": [{"path": "train.lr", "type": "categorical", "choices": [0.003]}],
        "trials": 1,
        "parallelism": 1,
        "pruner": {"name": "none"},
        "reference": None,
    }
    with api(stack) as client:
        study_id = client.post("/v1/studies", json=body).json()["id"]
    (trial_job,) = study_jobs(stack, study_id)
    with worker(stack, "doomed", beat=False) as doomed:
        stack.wait_for(lambda: running_past(stack, trial_job.id, 25), timeout=120, what="past a checkpoint")
        doomed.signal(signal.SIGKILL)
    with worker(stack, "rescuer"):
        study = stack.wait_for(lambda: finished(stack, study_id), timeout=300, what="the study's end")
    assert study["status"] == "succeeded", study["status_reason"]
    jobs = study_jobs(stack, study_id)
    assert [(job.trial_number, job.status) for job in jobs] == [(0, "succeeded"), (None, "succeeded")]
    assert jobs[0].id == trial_job.id and jobs[0].attempts == 2
    assert [event.kind for event in events(stack, trial_job.id)].count("resumed") == 1
    assert study["result"]["trials"] == {"complete": 1} and study["result"]["gain"] is None
