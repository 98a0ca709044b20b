"""A study driven end to end in-process on the embedded settings: trials are jobs the runner trains,
each ending job advances its study, the pruner stops a trial that lags, the winner is trained again
with the reference, and the study's result holds the winner, its test metric and its gain."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from studies_support import PRUNING_STUDY as STUDY
from studies_support import TRAINABLE_BASE as BASE
from worker_helpers import drive, start

from jobs.models import Job, JobEvent, MetricPoint, Study
from studies import service
from worker.config import get_worker_settings


def test_a_study_prunes_the_lagging_trial_and_trains_its_winner_with_the_reference(
    embedded: sessionmaker[Session],
) -> None:
    study_id = start(embedded, STUDY)
    ran = drive(embedded, study_id)
    assert [outcome for _, outcome in ran] == ["succeeded", "succeeded", "succeeded", "pruned", "succeeded"]
    with embedded() as session:
        study = session.get(Study, study_id)
        jobs = list(session.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.id)))
        pruned = jobs[3]
        pruned_events = list(session.scalars(select(JobEvent).where(JobEvent.job_id == pruned.id)))
        pruned_epochs = set(
            session.scalars(
                select(MetricPoint.epoch).where(MetricPoint.job_id == pruned.id, MetricPoint.name.like("val/%"))
            )
        )
        trials = service.list_trials(session, study=study, database_url=get_worker_settings().resolved_database_url)
    assert study.status == "succeeded", study.status_reason
    assert [job.trial_number for job in jobs] == [0, 1, 2, 3, None]
    assert [job.spec["train"]["lr"] for job in jobs] == [0.01, 0.003, 0.03, 1e-6, jobs[4].spec["train"]["lr"]]
    # The lagging trial stopped after the teacher's 2 epochs and the student's first 2 (warm-up 1):
    # 4 of its 6 epochs, and its job says why.
    assert pruned.status == "pruned" and pruned.error is None
    assert pruned_epochs == {1, 2, 3, 4}
    assert pruned_events[-1].kind == "pruned"
    assert "median pruner after epoch 2: val student/accuracy" in pruned_events[-1].reason
    assert [trial.state for trial in trials] == ["complete", "complete", "complete", "pruned"]
    assert [trial.last_epoch for trial in trials] == [4, 4, 4, 2]
    scores = {trial.number: trial.value for trial in trials[:3]}
    for trial, job in zip(trials[:3], jobs[:3], strict=True):
        assert trial.value == pytest.approx(job.result["validation"]["student"]["accuracy"])
    best = max(scores, key=lambda number: scores[number])
    finalist = jobs[4]
    result = study.result
    assert result["winner"] == {
        "trial": best,
        "values": {"train.lr": jobs[best].spec["train"]["lr"]},
        "validation": scores[best],
    }
    assert finalist.spec["reference"] == {"method": "student_only", "resamples": 200}
    assert finalist.spec["name"] == "lr-final-s0" and finalist.seed == BASE["train"].get("seed", 0)
    # The finalist is the winner trained again: same spec but the name and the reference, same student.
    assert finalist.result["student"] == pytest.approx(jobs[best].result["student"], abs=1e-6)
    assert result["student_job_id"] == finalist.id and result["finalist_job_ids"] == [finalist.id]
    assert result["test"] == finalist.result["student"]["accuracy"]
    assert result["gain"] == {**finalist.result["gain"], "over": "test_samples"}
    assert result["trials"] == {"complete": 3, "pruned": 1}
    assert drive(embedded, study_id) == []  # nothing left: a succeeded study asks for nothing more


def test_several_seeds_make_one_job_each_and_a_gain_over_seeds(embedded: sessionmaker[Session]) -> None:
    body = {**STUDY, "space": STUDY["space"][:], "initial": [{"train.lr": 0.01}], "trials": 1, "seeds": 2}
    body["base"] = {**BASE, "train": {**BASE["train"], "epochs": 2, "seed": 5}}
    study_id = start(embedded, body)
    ran = drive(embedded, study_id)
    assert [outcome for _, outcome in ran] == ["succeeded"] * 4  # 2 trial seeds, 2 finalist seeds
    with embedded() as session:
        study = session.get(Study, study_id)
        jobs = list(session.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.id)))
    assert [(job.trial_number, job.seed) for job in jobs] == [(0, 5), (0, 6), (None, 5), (None, 6)]
    validation = [job.result["validation"]["student"]["accuracy"] for job in jobs[:2]]
    assert study.result["winner"]["validation"] == pytest.approx(sum(validation) / 2)
    gains = [job.result["gain"] for job in jobs[2:]]
    gain = study.result["gain"]
    assert gain["over"] == "seeds" and gain["seeds"] == 2
    assert gain["value"] == pytest.approx((gains[0]["value"] + gains[1]["value"]) / 2)
    assert min(g["value"] for g in gains) - 1e-9 <= gain["low"] <= gain["value"] <= gain["high"]
    assert gain["high"] <= max(g["value"] for g in gains) + 1e-9
    assert study.result["test"] == pytest.approx(sum(job.result["student"]["accuracy"] for job in jobs[2:]) / 2)


def test_a_study_whose_every_trial_fails_fails_with_the_count(embedded: sessionmaker[Session]) -> None:
    body = {
        **STUDY,
        "base": {**BASE, "train": {**BASE["train"], "lr": 10.0, "optimizer": "sgd", "grad_clip": None}},
        "space": [{"path": "train.weight_decay", "type": "float", "low": 0.0, "high": 0.001}],
        "initial": [],
        "trials": 2,
    }
    body["base"]["method"] = {"name": "paper"}
    study_id = start(embedded, body)
    ran = drive(embedded, study_id)
    assert [outcome for _, outcome in ran] == ["failed", "failed"]
    with embedded() as session:
        study = session.get(Study, study_id)
    assert (study.status, study.status_reason, study.result) == ("failed", "no trial completed ({'fail': 2})", None)


def test_a_pruned_first_seed_cancels_its_queued_sibling_and_frees_the_slot_at_once(
    embedded: sessionmaker[Session],
) -> None:
    study_id = start(embedded, {**STUDY, "seeds": 2})
    ran = drive(embedded, study_id)
    # Three trials of two seeds each; the fourth's first seed is pruned, its second never runs; finalists.
    assert [outcome for _, outcome in ran] == ["succeeded"] * 6 + ["pruned"] + ["succeeded"] * 2
    with embedded() as session:
        jobs = list(session.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.id)))
        study = session.get(Study, study_id)
    assert [(job.trial_number, job.status) for job in jobs[6:8]] == [(3, "pruned"), (3, "cancelled")]
    assert jobs[7].status_reason == "trial 3 was pruned"
    # The same advance that cancelled the sibling told the trial pruned and queued the finalists.
    assert [job.trial_number for job in jobs[8:]] == [None, None] and study.status == "succeeded"


def test_only_a_trials_first_seed_is_judged_and_a_storage_error_trains_unpruned(
    embedded: sessionmaker[Session], tmp_path: Any
) -> None:
    from studies.pruning import trial_pruning

    study_id = start(embedded, STUDY)
    url = get_worker_settings().resolved_database_url
    with embedded() as session:
        study = session.get(Study, study_id)
    seed = BASE["train"].get("seed", 0)
    common = {"study_spec": study.spec, "optuna_name": study.optuna_name, "trial_number": 0}
    assert trial_pruning(**common, seed=seed, database_url=url) is not None
    assert trial_pruning(**common, seed=seed + 1, database_url=url) is None
    unreachable = f"sqlite:///{tmp_path}/absent/mmkd.db"  # no study storage there
    assert trial_pruning(**common, seed=seed, database_url=unreachable) is None


def test_a_trial_whose_ask_was_interrupted_fails_instead_of_training_partial_values(
    embedded: sessionmaker[Session],
) -> None:
    import optuna

    from migrations.study_storage import study_storage_url
    from studies import search
    from studies.spec import stored_spec

    study_id = start(embedded, {**STUDY, "initial": [], "trials": 3})
    url = get_worker_settings().resolved_database_url
    with embedded() as session:
        study = session.get(Study, study_id)
    storage = search.open_storage(study_storage_url(url))
    optuna_study = search.load_study(stored_spec(study.spec), name=study.optuna_name, storage=storage)
    interrupted = optuna_study.ask()  # asked, then the process died before any value was stored
    with embedded() as session:
        created = service.advance(session, study_id=study_id, database_url=url, max_attempts=3)
    assert created == []  # trial 0 still runs (parallelism 1): nothing new, and no job for the orphan
    states = {t.number: t.state for t in optuna_study.get_trials(deepcopy=False)}
    assert states[interrupted.number] == optuna.trial.TrialState.FAIL
