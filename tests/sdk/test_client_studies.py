"""The SDK's study calls against a live server (PostgreSQL, Redis): create (idempotent), read, list,
trials, cancel, wait; the refusals as the SDK's errors. No worker runs: the tests play its part in
the database (tests/studies_support.py) where a trial must end."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mmkd_client import (
    Client,
    Conflict,
    NotFound,
    Study,
    StudyCancelled,
    StudySummary,
    Trial,
    ValidationFailed,
    WaitTimeout,
)
from studies_support import FINAL_TEST, STUDY, VALIDATION, end_queued_jobs, run_study

SEED = STUDY["base"]["train"]["seed"]


@pytest.fixture
def client(api_server: Any) -> Iterator[Client]:
    """A client for a fresh owner."""
    with Client(api_server.url, api_server.new_key(), backoff=0.01) as sdk:
        yield sdk


def test_create_queues_the_first_trials_and_replays_by_key(client: Client) -> None:
    study = client.create_study(STUDY, idempotency_key="study-1")
    assert isinstance(study, Study) and study.status == "running" and not study.done
    assert study.name == "kd" and study.result is None and study.finished_at is None
    assert study.spec["trials"] == 4 and study.spec["seeds"] == 1  # defaults filled in
    assert study.spec["pruner"]["name"] == "median"
    assert study.links == {
        "self": f"/v1/studies/{study.id}",
        "trials": f"/v1/studies/{study.id}/trials",
        "cancel": f"/v1/studies/{study.id}/cancel",
        "jobs": f"/v1/jobs?study_id={study.id}",
        "student": None,
    }
    again = client.create_study(copy.deepcopy(STUDY), idempotency_key="study-1")
    assert again.id == study.id
    jobs = [job for job in client.list() if job.study_id == study.id]
    assert sorted((job.trial_number, job.seed, job.status) for job in jobs) == [
        (0, SEED, "queued"),
        (1, SEED, "queued"),
    ]
    with pytest.raises(Conflict, match="Idempotency-Key 'study-1' was already used"):
        client.create_study({**STUDY, "trials": 5}, idempotency_key="study-1")
    assert [found.id for found in client.studies()] == [study.id]


def test_create_from_a_yaml_file_with_a_conditional_space(client: Client, tmp_path: Path) -> None:
    body = copy.deepcopy(STUDY)
    body["space"] = [
        {"path": "method.name", "type": "categorical", "choices": ["logit_kd", "crd"]},
        {"path": "method.kd_weight", "type": "float", "low": 0.5, "high": 4, "when": {"method.name": ["logit_kd"]}},
        {"path": "method.alpha", "type": "float", "low": 0.1, "high": 1, "when": {"method.name": ["crd"]}},
    ]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(body))
    study = client.create_study(path)
    assert study.spec["space"][1]["when"] == {"method.name": ["logit_kd"]}
    for trial in client.trials(study.id):
        method = trial.values["method.name"]
        weight = "method.kd_weight" if method == "logit_kd" else "method.alpha"
        assert set(trial.values) == {"method.name", weight}


def test_a_file_that_holds_no_mapping_is_refused_before_sending(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="a study spec must be a mapping, got list"):
        client.create_study(path)
    assert list(client.studies()) == []


def test_get_list_pages_and_filters(client: Client) -> None:
    ids = [client.create_study({**STUDY, "name": f"s{index}"}).id for index in range(3)]
    client.cancel_study(ids[0])
    listed = list(client.studies(page_size=2))
    assert [study.id for study in listed] == ids[::-1]
    assert all(isinstance(study, StudySummary) and not isinstance(study, Study) for study in listed)
    assert [(study.name, study.status) for study in listed] == [
        ("s2", "running"),
        ("s1", "running"),
        ("s0", "cancelled"),
    ]
    assert [study.id for study in client.studies(status="running", page_size=1)] == ids[:0:-1]
    assert [study.id for study in client.studies(status=["cancelled", "failed"])] == [ids[0]]
    got = client.study(ids[1])
    assert got.id == ids[1] and got.spec["space"][0]["path"] == "method.kd_weight"
    with pytest.raises(NotFound):
        client.study(10**9)


def test_another_owner_cannot_see_or_cancel_a_study(client: Client, api_server: Any) -> None:
    study = client.create_study(STUDY)
    with Client(api_server.url, api_server.new_key()) as stranger:
        for call in (stranger.study, stranger.trials, stranger.cancel_study):
            with pytest.raises(NotFound, match=f"no study {study.id}"):
                call(study.id)
        assert list(stranger.studies()) == []
    assert client.study(study.id).status == "running"


def test_trials_show_values_jobs_and_how_they_ended(client: Client, api_server: Any) -> None:
    study = client.create_study(STUDY)
    first = client.trials(study.id)
    assert [(trial.number, trial.state, trial.value) for trial in first] == [(0, "running", None), (1, "running", None)]
    assert all(isinstance(trial, Trial) and 0.25 <= float(trial.values["method.kd_weight"]) <= 8 for trial in first)
    jobs = {job.trial_number: job for job in client.list() if job.study_id == study.id}
    assert [[(job.id, job.status, job.seed) for job in trial.jobs] for trial in first] == [
        [(jobs[0].id, "queued", SEED)],
        [(jobs[1].id, "queued", SEED)],
    ]
    assert client.get(jobs[0].id).spec["method"]["kd_weight"] == first[0].values["method.kd_weight"]

    end_queued_jobs(api_server.database_url, study.id, prune={1})
    after = client.trials(study.id)
    assert [(trial.number, trial.state) for trial in after] == [
        (0, "complete"),
        (1, "pruned"),
        (2, "running"),
        (3, "running"),
    ]
    assert after[0].value == pytest.approx(VALIDATION[0]) and after[1].value is None
    assert [job.status for job in after[0].jobs] == ["succeeded"]
    assert [job.status for job in after[1].jobs] == ["pruned"]
    pruned = client.wait(after[1].jobs[0].id, timeout=10)  # a normal end of a trial: returned, not raised
    assert pruned.status == "pruned" and pruned.done and pruned.result is None
    assert pruned.study_id == study.id and pruned.trial_number == 1
    assert [event.kind for event in client.events(pruned.id)][-1] == "pruned"


def test_cancel_ends_the_study_and_its_queued_jobs_then_conflicts(client: Client) -> None:
    study = client.create_study(STUDY)
    cancelled = client.cancel_study(study.id)
    assert cancelled.status == "cancelled" and cancelled.done and cancelled.finished_at is not None
    assert cancelled.status_reason == "cancelled by the owner"
    assert {job.status for job in client.list() if job.study_id == study.id} == {"cancelled"}
    assert {trial.state for trial in client.trials(study.id)} == {"fail"}
    with pytest.raises(Conflict, match=f"study {study.id} already cancelled") as conflict:
        client.cancel_study(study.id)
    assert conflict.value.status == 409
    with pytest.raises(StudyCancelled, match="cancelled by the owner") as ended:
        client.wait_study(study.id, timeout=5, poll=0.1)
    assert ended.value.study.id == study.id


def test_wait_study_times_out_on_a_running_study(client: Client) -> None:
    study = client.create_study(STUDY)
    started = time.monotonic()
    seen: list[str] = []
    with pytest.raises(WaitTimeout, match=f"study {study.id} did not end within 0.5s"):
        client.wait_study(study.id, timeout=0.5, poll=0.1, on_update=lambda s: seen.append(s.status))
    assert 0.5 <= time.monotonic() - started < 5
    assert len(seen) >= 3 and set(seen) == {"running"}


def test_wait_study_returns_the_result_once_the_winner_trained(client: Client, api_server: Any) -> None:
    study = client.create_study({**STUDY, "seeds": 2})
    worker = threading.Thread(target=run_study, args=(api_server.database_url, study.id))
    worker.start()
    try:
        done = client.wait_study(study.id, timeout=60, poll=0.1)
    finally:
        worker.join()
    assert done.status == "succeeded" and done.status_reason == "trial 2 won; 2 finalist(s) trained"
    result = done.result
    assert result is not None
    assert result["winner"]["trial"] == 2 and result["winner"]["validation"] == pytest.approx(VALIDATION[2])
    assert result["metric"] == "accuracy" and result["direction"] == "maximize"
    assert result["test"] == pytest.approx(FINAL_TEST) and result["trials"] == {"complete": 4}
    finalists = [job for job in client.list() if job.study_id == study.id and job.trial_number is None]
    assert sorted(job.id for job in finalists) == result["finalist_job_ids"]
    assert result["student_job_id"] == result["finalist_job_ids"][0]
    assert done.links["student"] == f"/v1/jobs/{result['student_job_id']}/artifacts"
    assert all(
        client.get(job.id).spec["reference"] == {"method": "student_only", "resamples": 1000} for job in finalists
    )
    gain = result["gain"]
    assert gain["over"] == "seeds" and gain["seeds"] == 2 and gain["value"] == pytest.approx(0.03)
    assert gain["low"] == pytest.approx(0.02) and gain["high"] == pytest.approx(0.04)


@pytest.mark.parametrize(
    ("change", "path", "needle"),
    [
        ({"trials": 0}, "trials", "greater than or equal to 1"),
        (
            {"space": [{"path": "method.kd_weight", "type": "float", "low": 0.25}]},
            "space.0.float.high",
            "Field required",
        ),
        ({"objective": {"metric": "mae"}}, "objective.metric", "must be one of accuracy, macro_f1"),
        (
            {"space": [{"path": "method.kd_weight", "type": "float", "low": -1, "high": 1}]},
            "space.0",
            "space.0: method.kd_weight = -1.0 makes an invalid job spec",
        ),
    ],
)
def test_an_invalid_study_is_a_validation_failure_with_the_field(
    client: Client, change: dict[str, Any], path: str | None, needle: str
) -> None:
    with pytest.raises(ValidationFailed) as refused:
        client.create_study({**STUDY, **change})
    assert refused.value.status == 422
    if path is not None:
        assert refused.value.paths == [path]
    assert any(needle in f"{error['path']}: {error['message']}" for error in refused.value.errors), refused.value.errors
    assert list(client.studies()) == []


def test_successive_trials_sample_new_values(client: Client, api_server: Any) -> None:
    study = client.create_study({**STUDY, "trials": 4, "parallelism": 1})
    for _ in range(3):
        end_queued_jobs(api_server.database_url, study.id)
    weights = [trial.values["method.kd_weight"] for trial in client.trials(study.id)]
    assert len(weights) == 4 and len(set(weights)) == 4, weights
