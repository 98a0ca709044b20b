"""What the studies API answers: a study, a page of studies, its trials."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from jobs.models import Study
from jobs.status import JobStatus, StudyStatus
from service.jobs.results import Gain
from studies.service import TrialView
from studies.spec import Scalar, StudySpec


class StudyGain(Gain):
    """The winner's gain over training alone: one seed's paired bootstrap over the test samples, or with
    several seeds the mean of the per-seed gains and a bootstrap over the seeds."""

    low: float = Field(description="Lower end of the gain's 95% interval (over test samples, or over seeds).")
    high: float = Field(description="Upper end of that interval.")
    resamples: int = Field(ge=0, description="Bootstrap resamples (of the test samples, or of the seeds).")
    over: Literal["test_samples", "seeds"] = Field(description="What the 95% interval resamples.")
    seeds: int | None = Field(default=None, ge=2, description="Finalist seeds, when the interval is over seeds.")


class Winner(BaseModel):
    """The trial with the best validation objective."""

    trial: int = Field(ge=0, description="Its number.")
    values: dict[str, Scalar] = Field(description="Its values by spec path.")
    validation: float = Field(description="Its objective (validation metric), mean over seeds.")


class StudyResult(BaseModel):
    """A succeeded study: the winner, its finalists' test metric and its gain over training alone."""

    winner: Winner
    metric: str = Field(description="The objective's metric (validation during the search, test for the finalists).")
    direction: Literal["minimize", "maximize"]
    student_job_id: int = Field(description="The first finalist: its exported student is the study's student.")
    finalist_job_ids: list[int] = Field(description="The winner trained again, one job per seed, with the reference.")
    test: float = Field(description="The finalists' test metric, mean over seeds.")
    gain: StudyGain | None = Field(description="Null when the study has no reference or the winner is student_only.")
    trials: dict[str, int] = Field(description="Trials by Optuna state (complete, pruned, fail...).")


class StudyLinks(BaseModel):
    """Where to go next."""

    self: str
    trials: str
    cancel: str
    jobs: str = Field(description="The study's jobs, trials and finalists (`GET /v1/jobs?study_id=`).")
    student: str | None = Field(
        default=None, description="A succeeded study's student: the first finalist job's artifacts."
    )


class StudySummary(BaseModel):
    """A study in a listing (no spec)."""

    id: int
    name: str
    status: StudyStatus
    status_reason: str | None = Field(description="What the study does now, or why it ended.")
    owner: str
    created_at: dt.datetime
    finished_at: dt.datetime | None

    @classmethod
    def of(cls, study: Study, *, owner: str) -> StudySummary:
        """Build from the ORM row."""
        return cls(
            id=study.id,
            name=study.name,
            status=study.status,
            status_reason=study.status_reason,
            owner=owner,
            created_at=study.created_at,
            finished_at=study.finished_at,
        )


class StudyOut(StudySummary):
    """A study as a client reads it."""

    spec: StudySpec | dict[str, Any] = Field(
        union_mode="left_to_right", description="The study spec as validated at create, defaults filled in."
    )
    result: StudyResult | dict[str, Any] | None = Field(
        union_mode="left_to_right", description="Succeeded studies only."
    )
    links: StudyLinks

    @classmethod
    def of_study(cls, study: Study, *, owner: str) -> StudyOut:
        """Build from the ORM row; a stored spec or result the models refuse is kept as stored."""
        base = f"/v1/studies/{study.id}"
        winner_job = (study.result or {}).get("student_job_id") if study.status == StudyStatus.SUCCEEDED else None
        student = f"/v1/jobs/{winner_job}/artifacts" if isinstance(winner_job, int) else None
        return cls(
            **StudySummary.of(study, owner=owner).model_dump(),
            spec=study.spec,
            result=study.result,
            links=StudyLinks(
                self=base,
                trials=f"{base}/trials",
                cancel=f"{base}/cancel",
                jobs=f"/v1/jobs?study_id={study.id}",
                student=student,
            ),
        )


class StudyPage(BaseModel):
    """One page of studies, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[StudySummary]
    next_cursor: str | None


class TrialJob(BaseModel):
    """One job of a trial (one per seed)."""

    id: int
    status: JobStatus
    seed: int


class TrialOut(BaseModel):
    """One trial: Optuna's state, its values, its objective once complete, and its jobs."""

    number: int = Field(ge=0)
    state: Literal["waiting", "running", "complete", "pruned", "fail"]
    values: dict[str, Scalar]
    value: float | None = Field(description="The objective (mean over seeds) of a complete trial.")
    last_epoch: int | None = Field(description="The last epoch whose validation value the trial reported.")
    jobs: list[TrialJob]

    @classmethod
    def of(cls, trial: TrialView) -> TrialOut:
        """Build from the service's view."""
        return cls(
            number=trial.number,
            state=trial.state,  # type: ignore[arg-type]
            values=trial.values,
            value=trial.value,
            last_epoch=trial.last_epoch,
            jobs=[TrialJob(**job) for job in trial.jobs],
        )


class TrialList(BaseModel):
    """A study's trials in order."""

    items: list[TrialOut]
