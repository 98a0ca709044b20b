"""The reaper knows studies: a study whose trial ended on a worker that died before advancing it is
moved on by the reaper's next pass (its next trial queued and published), and nothing else is."""

from __future__ import annotations

from functools import partial

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from studies_support import PRUNING_STUDY as STUDY
from worker_helpers import queued, start

from jobs.models import Job
from jobs.reaper import reap_once
from studies.service import advance_running
from worker import runner
from worker.config import get_worker_settings


def test_the_reaper_advances_a_study_its_worker_left_behind(
    embedded: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    study_id = start(embedded, {**STUDY, "trials": 2})
    (first,) = queued(embedded, study_id)
    monkeypatch.setattr(runner, "_advance_study", lambda *args: None)  # the worker dies right after the job
    assert runner.run_job(first) == "succeeded"
    assert queued(embedded, study_id) == []  # the study did not move
    published: list[int] = []
    settings = get_worker_settings()
    advance = partial(advance_running, database_url=settings.resolved_database_url, max_attempts=3)
    result = reap_once(embedded, enqueue=published.append, requeue_after_seconds=600, advance_studies=advance)
    (second,) = queued(embedded, study_id)
    assert result.studies == [study_id] and published == [second]
    with embedded() as session:
        job = session.get(Job, second)
        kinds = list(session.scalars(select(Job.trial_number).where(Job.study_id == study_id).order_by(Job.id)))
    assert kinds == [0, 1] and job.spec["train"]["lr"] == 0.003  # the second initial trial
    again = reap_once(embedded, enqueue=published.append, requeue_after_seconds=600, advance_studies=advance)
    assert again.studies == [] and published == [second]  # nothing new while the trial waits
