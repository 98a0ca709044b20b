"""The studies API: create (idempotent), read, list, trials, cancel; owner isolation; the refusals."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from api_helpers import SPEC, Api
from sqlalchemy import select

from jobs.models import Job

BASE = {**SPEC, "method": {"name": "logit_kd"}}
STUDY: dict[str, Any] = {
    "name": "kd-search",
    "base": BASE,
    "space": [
        {"path": "method.kd_weight", "type": "float", "low": 0.25, "high": 8, "log": True},
        {"path": "method.kd_temperature", "type": "categorical", "choices": [1, 2, 4]},
    ],
    "trials": 6,
    "parallelism": 2,
}


def create(api: Api, token: str, body: dict[str, Any] | None = None, key: str | None = None) -> Any:
    headers = api.auth(token) | ({"Idempotency-Key": key} if key else {})
    return api.client.post("/v1/studies", json=body or STUDY, headers=headers)


def study_jobs(api: Api, study_id: int) -> list[Job]:
    return list(api.session.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.id)))


@pytest.mark.parametrize("backend", ["pg", "sqlite"], indirect=True)
def test_a_study_queues_its_first_trials_as_jobs_of_its_owner(api: Api) -> None:
    token = api.new_key()
    response = create(api, token)
    assert response.status_code == 201, response.text
    study = response.json()
    assert study["status"] == "running" and response.headers["Location"] == f"/v1/studies/{study['id']}"
    assert study["spec"]["objective"] == {"metric": None} and study["spec"]["trials"] == 6
    assert study["links"] == {
        "self": f"/v1/studies/{study['id']}",
        "trials": f"/v1/studies/{study['id']}/trials",
        "cancel": f"/v1/studies/{study['id']}/cancel",
        "jobs": f"/v1/jobs?study_id={study['id']}",
        "student": None,  # until it succeeded
    }
    jobs = study_jobs(api, study["id"])
    assert [job.trial_number for job in jobs] == [0, 1]  # parallelism 2: two trials, one job each
    assert all(job.status == "queued" for job in jobs)
    for job in jobs:
        assert job.spec["method"]["name"] == "logit_kd"
        assert 0.25 <= job.spec["method"]["kd_weight"] <= 8 and job.spec["method"]["kd_temperature"] in (1, 2, 4)
        assert job.spec["train"]["seed"] == SPEC["train"]["seed"]
    listed = api.client.get("/v1/jobs", headers=api.auth(token)).json()["items"]
    assert {(item["study_id"], item["trial_number"]) for item in listed} == {(study["id"], 0), (study["id"], 1)}
    api.submit(token)  # a job of no study
    other = create(api, token).json()
    mine = api.client.get(study["links"]["jobs"], headers=api.auth(token)).json()["items"]
    assert [item["id"] for item in mine] == [job.id for job in reversed(jobs)]
    theirs = api.client.get(f"/v1/jobs?study_id={other['id']}", headers=api.auth(token)).json()["items"]
    assert {item["study_id"] for item in theirs} == {other["id"]} and len(theirs) == 2
    stranger = api.client.get(study["links"]["jobs"], headers=api.auth(api.new_key())).json()["items"]
    assert stranger == []  # another owner's study filters to nothing
    trials = api.client.get(f"/v1/studies/{study['id']}/trials", headers=api.auth(token)).json()["items"]
    assert [(t["number"], t["state"]) for t in trials] == [(0, "running"), (1, "running")]
    assert trials[0]["jobs"] == [{"id": jobs[0].id, "status": "queued", "seed": SPEC["train"]["seed"]}]
    assert trials[0]["values"] == {
        "method.kd_weight": jobs[0].spec["method"]["kd_weight"],
        "method.kd_temperature": jobs[0].spec["method"]["kd_temperature"],
    }


def test_auto_starts_from_every_method_at_its_defaults(api: Api) -> None:
    token = api.new_key()
    body = {"name": "auto", "base": {**SPEC, "method": {"name": "auto"}}, "parallelism": 3, "seeds": 2}
    study = create(api, token, body).json()
    jobs = study_jobs(api, study["id"])
    assert [(job.trial_number, job.spec["train"]["seed"]) for job in jobs] == [
        (trial, SPEC["train"]["seed"] + seed) for trial in range(3) for seed in range(2)
    ]
    expected = [
        {"name": "student_only"},
        {"name": "logit_kd", "kd_weight": 1.0, "kd_temperature": 4.0},
        {"name": "mfh_kd", "keep_ratio": 0.5, "kd_temperature": 1.0},
    ]
    for job, method in zip(jobs[::2], expected, strict=True):
        assert {key: job.spec["method"][key] for key in method} == method
    trials = api.client.get(f"/v1/studies/{study['id']}/trials", headers=api.auth(token)).json()["items"]
    assert [t["state"] for t in trials] == ["running"] * 3 + ["waiting"] * 5  # eight methods enqueued


def test_create_is_idempotent_per_key_and_refuses_another_body(api: Api) -> None:
    token = api.new_key()
    first = create(api, token, key="k1")
    again = create(api, token, key="k1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert len(study_jobs(api, first.json()["id"])) == 2  # the replay queued nothing more
    other = create(api, token, {**STUDY, "trials": 7}, key="k1")
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]


def test_another_owners_study_is_a_404_everywhere(api: Api) -> None:
    study = create(api, api.new_key()).json()
    stranger = api.auth(api.new_key())
    for method, path in (
        ("get", f"/v1/studies/{study['id']}"),
        ("get", f"/v1/studies/{study['id']}/trials"),
        ("post", f"/v1/studies/{study['id']}/cancel"),
    ):
        response = api.client.request(method, path, headers=stranger)
        assert response.status_code == 404, path
        assert str(study["id"]) in response.json()["detail"] and "owner" not in response.json()["detail"]
    assert api.client.get("/v1/studies", headers=stranger).json()["items"] == []
    assert study_jobs(api, study["id"])[0].status == "queued"


def test_cancel_cancels_queued_trials_and_then_conflicts(api: Api) -> None:
    token = api.new_key()
    study = create(api, token).json()
    cancelled = api.client.post(f"/v1/studies/{study['id']}/cancel", headers=api.auth(token))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    api.session.expire_all()
    assert [job.status for job in study_jobs(api, study["id"])] == ["cancelled", "cancelled"]
    trials = api.client.get(f"/v1/studies/{study['id']}/trials", headers=api.auth(token)).json()["items"]
    assert {t["state"] for t in trials} == {"fail"}
    again = api.client.post(f"/v1/studies/{study['id']}/cancel", headers=api.auth(token))
    assert again.status_code == 409


def test_the_list_is_newest_first_paginated_and_filtered(api: Api) -> None:
    token = api.new_key()
    ids = [create(api, token, {**STUDY, "name": f"s{i}"}).json()["id"] for i in range(3)]
    api.client.post(f"/v1/studies/{ids[0]}/cancel", headers=api.auth(token))
    page = api.client.get("/v1/studies?limit=2", headers=api.auth(token)).json()
    assert [item["id"] for item in page["items"]] == ids[:0:-1]
    rest = api.client.get(f"/v1/studies?limit=2&cursor={page['next_cursor']}", headers=api.auth(token)).json()
    assert [item["id"] for item in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    running = api.client.get("/v1/studies?status=running", headers=api.auth(token)).json()
    assert [item["id"] for item in running["items"]] == ids[:0:-1]


def test_a_job_with_method_auto_points_to_studies(api: Api) -> None:
    response = api.submit(api.new_key(), {**SPEC, "method": {"name": "auto"}})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["path"] == "method" and "POST /v1/studies" in error["message"]


def _study(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(STUDY)
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (_study(space=[{"path": "dataset.name", "type": "categorical", "choices": ["mfeat"]}]), "space.0.path"),
        (_study(space=[{"path": "train.seed", "type": "int", "low": 0, "high": 9}]), "cannot be searched"),
        (
            _study(space=[{"path": "method.kd_weight", "type": "float", "low": -1, "high": 1}]),
            "space.0: method.kd_weight = -1.0 makes an invalid job spec: method.logit_kd.kd_weight",
        ),
        (_study(space=[{"path": "method.colour", "type": "float", "low": 0, "high": 1}]), "Extra inputs"),
        (
            _study(space=[{"path": "method.kd_weight", "type": "float", "low": 2, "high": 1}]),
            "space.0: needs low <= high",
        ),
        (
            _study(
                space=[
                    {"path": "method.name", "type": "categorical", "choices": ["logit_kd", "dml"]},
                    {"path": "method.kd_weight", "type": "float", "low": 0.5, "high": 2},
                ]
            ),
            "space.1: method.kd_weight depends on the method",
        ),
        (
            _study(
                space=[
                    {"path": "method.name", "type": "categorical", "choices": ["logit_kd", "crd"]},
                    {
                        "path": "method.kd_weight",
                        "type": "float",
                        "low": 0.5,
                        "high": 2,
                        "when": {"method.name": ["crd", "x"]},
                    },
                ]
            ),
            "space.1.when: 'method.name' must be an earlier categorical parameter",
        ),
        (
            _study(space=[{"path": "method.name", "type": "categorical", "choices": ["teacher_only", "dml"]}]),
            "no teacher_only",
        ),
        (_study(initial=[{"method.kd_weight": 9.0}]), "initial.0.method.kd_weight: not a value of the space"),
        (_study(base={**BASE, "method": {"name": "auto"}}), "space and initial must be empty"),
        (_study(objective={"metric": "mae"}), "objective.metric: must be one of accuracy, macro_f1 for classification"),
        (_study(base={**BASE, "reference": {}}), "base.reference: the study trains its winner's reference"),
        (_study(trials=0), "trials"),
        (
            _study(space=[{"path": "train.epochs.x", "type": "int", "low": 1, "high": 2}]),
            "space.0.path: 'train.epochs.x' cannot be searched (only a field of method, model or train",
        ),
        (
            _study(
                space=[
                    {"path": "method.name", "type": "categorical", "choices": ["logit_kd", "dml"]},
                    {
                        "path": "method.kd_weight",
                        "type": "float",
                        "low": 1,
                        "high": 2,
                        "when": {"method.name": ["logit_kd"] * 3},
                    },
                ]
            ),
            "space.1.float.when: Value error, when.method.name: values must be unique",
        ),
        (
            _study(
                space=[
                    {"path": "method.name", "type": "categorical", "choices": ["logit_kd", "dml"]},
                    {
                        "path": "method.kd_weight",
                        "type": "float",
                        "low": 1,
                        "high": 2,
                        "when": {"method.name": ["logit_kd"]},
                    },
                    {
                        "path": "method.kd_weight",
                        "type": "float",
                        "low": 1,
                        "high": 3,
                        "when": {"method.name": ["logit_kd", "dml"]},
                    },
                ]
            ),
            "space.2.path: method.kd_weight is searched twice",
        ),
        (
            _study(
                base={**BASE, "method": {"name": "mst_distill"}},
                space=[
                    {"path": "train.batch_size", "type": "categorical", "choices": [64, 4096]},
                    {"path": "model.repr_dim", "type": "categorical", "choices": [64, 512]},
                ],
                initial=[{"train.batch_size": 4096, "model.repr_dim": 512}],
            ),
            "initial.0: makes an invalid job spec",
        ),
        (
            _study(
                space=[
                    {"path": "model.dropout", "type": "categorical", "choices": [i / 100 for i in range(32)]},
                    {"path": "train.label_smoothing", "type": "categorical", "choices": [i / 100 for i in range(32)]},
                    {
                        "path": "method.kd_weight",
                        "type": "float",
                        "low": 0.5,
                        "high": 2,
                        "when": {
                            "model.dropout": [i / 100 for i in range(32)],
                            "train.label_smoothing": [i / 100 for i in range(32)],
                        },
                    },
                ]
            ),
            "space.2: more than 256 combinations",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_study_that_could_sample_an_invalid_job_is_a_422(api: Api, body: dict[str, Any], needle: str) -> None:
    response = create(api, api.new_key(), body)
    assert response.status_code == 422, response.text
    text = " ".join(f"{error['path']}: {error['message']}" for error in response.json()["errors"])
    assert needle in text, text


def test_a_study_whose_first_advance_failed_is_stored_and_advanced_later(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from studies import service

    def broken(*args: Any, **kwargs: Any) -> list[int]:
        raise RuntimeError("the study storage is unreachable")

    monkeypatch.setattr(service, "advance_and_publish", broken)
    token = api.new_key()
    response = create(api, token)
    assert response.status_code == 201 and response.json()["status"] == "running"
    study_id = response.json()["id"]
    assert study_jobs(api, study_id) == []
    assert api.client.get(f"/v1/studies/{study_id}/trials", headers=api.auth(token)).json()["items"] == []
    monkeypatch.undo()
    database_url = api.app.state.settings.resolved_database_url
    created = service.advance(api.session, study_id=study_id, database_url=database_url, max_attempts=3)
    assert [job.id for job in study_jobs(api, study_id)] == created and len(created) == 2


def test_a_study_whose_first_trials_would_pass_the_queue_limit_is_refused(api: Api) -> None:
    from jobs.errors import LimitExceededError
    from jobs.keys import get_or_create_owner
    from studies import service
    from studies.spec import StudySpec

    owner = get_or_create_owner(api.session, name=f"limited-{id(api)}")
    api.session.commit()
    spec = StudySpec.model_validate(STUDY)  # parallelism 2, one seed: 2 jobs first
    service.create_study(api.session, owner_id=owner.id, spec=spec, idempotency_key=None, max_queued=3)
    # The first study was not advanced yet: its two first trials count as queued already.
    with pytest.raises(LimitExceededError, match="has 2 queued jobs and the study's first trials are 2 more"):
        service.create_study(api.session, owner_id=owner.id, spec=spec, idempotency_key=None, max_queued=3)
    small = StudySpec.model_validate({**STUDY, "parallelism": 1})
    service.create_study(api.session, owner_id=owner.id, spec=small, idempotency_key=None, max_queued=3)
