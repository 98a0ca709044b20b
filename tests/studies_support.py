"""Playing the worker's part for a study in the SDK's and the CLI's tests (no worker runs there): end
the study's queued jobs in the database as a worker would record them, then advance the study as a
worker does after each job (a plain module: test files cannot import conftest)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from jobs import lifecycle
from jobs.models import Job, Study
from service.jobs.results import RESULT_EXAMPLE
from studies import service

#: A minimal valid study: logit KD's weight over four trials, two at once, one seed.
STUDY: dict[str, Any] = {
    "name": "kd",
    "base": {
        "name": "mfeat-kd",
        "dataset": {"name": "mfeat", "primary": ["fou", "zer", "mor"], "auxiliary": ["fac", "pix", "kar"]},
        "method": {"name": "logit_kd"},
        "train": {"epochs": 2, "seed": 7},
    },
    "space": [{"path": "method.kd_weight", "type": "float", "low": 0.25, "high": 8, "log": True}],
    "trials": 4,
    "parallelism": 2,
}
#: A base that trains in seconds on CPU (a real trainer runs it: the worker and integration tests).
TRAINABLE_BASE: dict[str, Any] = {
    "name": "kd",
    "dataset": {"name": "mfeat", "primary": ["fou", "zer"], "auxiliary": ["kar"]},
    "model": {"hidden_dim": 16, "repr_dim": 8},
    "method": {"name": "logit_kd", "teacher_epochs": 2},
    "train": {"epochs": 4, "batch_size": 128, "device": "cpu", "lr": 0.01},
    "checkpoint": {"every_epochs": None},
}
#: Four trials in a known order: three learning rates that learn, then one that cannot (1e-6); the
#: median pruner judges from the fourth trial on (three finished first), after the student's first epoch.
PRUNING_STUDY: dict[str, Any] = {
    "name": "lr",
    "base": TRAINABLE_BASE,
    "space": [{"path": "train.lr", "type": "categorical", "choices": [0.01, 0.003, 0.03, 1e-6]}],
    "initial": [{"train.lr": lr} for lr in (0.01, 0.003, 0.03, 1e-6)],
    "trials": 4,
    "parallelism": 1,
    "pruner": {"name": "median", "startup_trials": 3, "warmup_epochs": 1},
    "reference": {"resamples": 200},
}
#: Each trial's validation accuracy: trial 2 wins.
VALIDATION = {0: 0.80, 1: 0.85, 2: 0.95, 3: 0.90}
#: The finalists' test accuracy and their gain by seed index (the base seed is 7).
FINAL_TEST = 0.93
FINAL_GAINS = {0: (0.02, 0.005, 0.04), 1: (0.04, 0.02, 0.06)}


def trial_result(accuracy: float) -> dict[str, Any]:
    """A trial job's result: the student's validation accuracy is its objective."""
    result = copy.deepcopy(RESULT_EXAMPLE)
    result["validation"]["student"]["accuracy"] = accuracy
    return result


def finalist_result(seed_index: int) -> dict[str, Any]:
    """A finalist's result: its test accuracy and its gain over the reference."""
    value, low, high = FINAL_GAINS[seed_index]
    result = copy.deepcopy(RESULT_EXAMPLE)
    result["student"]["accuracy"] = FINAL_TEST
    result["gain"] = {**result["gain"], "student": FINAL_TEST, "reference": FINAL_TEST - value}
    result["gain"].update(value=value, low=low, high=high)
    return result


def end_queued_jobs(
    database_url: str,
    study_id: int,
    *,
    prune: Collection[int] = (),
    accuracy: Callable[[int], float] = VALIDATION.__getitem__,
) -> list[int]:
    """End every queued job of the study: a trial in ``prune`` is pruned after its first epoch, any
    other trial succeeds with ``accuracy(trial)``, a finalist with :func:`finalist_result`; then
    advance the study once. Returns the ids of the jobs ended."""
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            study = session.get(Study, study_id)
            assert study is not None
            base_seed = study.spec["base"]["train"]["seed"]
            jobs = session.scalars(
                select(Job).where(Job.study_id == study_id, Job.status == "queued").order_by(Job.id)
            ).all()
            ended = []
            for job in jobs:
                lifecycle.transition(session, job_id=job.id, to="running", reason="test: a worker claimed it")
                if job.trial_number in prune:
                    lifecycle.transition(session, job_id=job.id, to="pruned", reason="test: pruned at epoch 1")
                else:
                    result = (
                        finalist_result(job.seed - base_seed)
                        if job.trial_number is None
                        else trial_result(accuracy(job.trial_number))
                    )
                    lifecycle.transition(session, job_id=job.id, to="succeeded", values={"result": result})
                session.commit()
                ended.append(job.id)
            service.advance(session, study_id=study_id, database_url=database_url, max_attempts=3)
        return ended
    finally:
        engine.dispose()


def run_study(database_url: str, study_id: int, *, prune: Collection[int] = (), rounds: int = 20) -> None:
    """End the study's queued jobs round after round until it is no longer running."""
    engine = create_engine(database_url)
    try:
        for _ in range(rounds):
            end_queued_jobs(database_url, study_id, prune=prune)
            with Session(engine) as session:
                study = session.get(Study, study_id)
                assert study is not None
                if study.status != "running":
                    return
        raise AssertionError(f"study {study_id} still running after {rounds} rounds")
    finally:
        engine.dispose()
