"""What the jobs endpoints return. Requests are validated with ``core.spec.JobSpec`` itself."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from core.spec import JobSpec
from jobs.models import Artifact, Job, JobEvent, JobLogLine, MetricPoint
from jobs.status import JobStatus
from service.jobs.results import RESULT_EXAMPLE, JobResult, ProbeResult

#: Metric series names are stored in a 128-character column.
MAX_METRIC_NAME = 128
MetricName = Annotated[str, Field(min_length=1, max_length=MAX_METRIC_NAME)]
#: A spec or result stored before the current rules, shown as stored. The OpenAPI schema leaves it out:
#: it documents what this version writes (docs/api.md, *Legacy rows*).
StoredJson = SkipJsonSchema[dict[str, Any]]


class Progress(BaseModel):
    """How far a running job is."""

    epoch: int | None = None
    step: int | None = None
    total_epochs: int | None = None
    total_steps: int | None = None
    eta_seconds: float | None = None


class JobLinks(BaseModel):
    """Where to read more about the job."""

    self: str
    events: str
    metrics: str
    artifacts: str
    cancel: str


class JobSummary(BaseModel):
    """A job in a listing (no spec)."""

    id: int
    name: str
    status: JobStatus
    status_reason: str | None = Field(description="Why the job is in its status (a failure's reason code...).")
    owner: str
    spec_hash: str
    seed: int
    attempts: int
    max_attempts: int
    progress: Progress
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    study_id: int | None = Field(default=None, description="The study this job is a trial or finalist of.")
    trial_number: int | None = Field(default=None, description="The study's trial it trains; null for a finalist.")

    @classmethod
    def of(cls, job: Job, *, owner: str) -> JobSummary:
        """Build from the ORM row."""
        return cls(**_summary_fields(job, owner))


class JobOut(JobSummary):
    """A job as a client reads it."""

    spec: JobSpec | StoredJson = Field(
        union_mode="left_to_right",
        description="The spec as validated at submit, defaults filled in.",
    )
    latest_metrics: dict[MetricName, float] = Field(
        default_factory=dict, description="The newest value of every metric series."
    )
    result: JobResult | ProbeResult | StoredJson | None = Field(
        union_mode="left_to_right",
        description="Succeeded jobs only: test (and validation) metrics of the student, teacher and auxiliary "
        "networks, typed by `task`; for a `kind: probe` job, the probe's figures (`kind: probe`).",
        json_schema_extra={"example": RESULT_EXAMPLE},
    )
    error: str | None = Field(description="Failed jobs only: what went wrong, in one line.")
    queued_at: dt.datetime | None
    updated_at: dt.datetime
    last_checkpoint_key: str | None
    links: JobLinks

    @classmethod
    def of_job(cls, job: Job, *, owner: str) -> JobOut:
        """Build from the ORM row; a stored spec or result the models refuse is kept as stored, never a 500."""
        base = f"/v1/jobs/{job.id}"
        links = JobLinks(
            self=base,
            events=f"{base}/events",
            metrics=f"{base}/metrics",
            artifacts=f"{base}/artifacts",
            cancel=f"{base}/cancel",
        )
        return cls(
            **_summary_fields(job, owner),
            spec=job.spec,
            latest_metrics=job.latest_metrics or {},
            result=job.result,
            error=job.error,
            queued_at=job.queued_at,
            updated_at=job.updated_at,
            last_checkpoint_key=job.last_checkpoint_key,
            links=links,
        )


def _summary_fields(job: Job, owner: str) -> dict[str, Any]:
    progress = Progress(
        epoch=job.epoch,
        step=job.step,
        total_epochs=job.total_epochs,
        total_steps=job.total_steps,
        eta_seconds=job.eta_seconds,
    )
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "status_reason": job.status_reason,
        "owner": owner,
        "spec_hash": job.spec_hash,
        "seed": job.seed,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "progress": progress,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "study_id": job.study_id,
        "trial_number": job.trial_number,
    }


class JobPage(BaseModel):
    """One page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[JobSummary]
    next_cursor: str | None


class EventOut(BaseModel):
    """A state transition or notable moment."""

    id: int
    at: dt.datetime
    kind: str = Field(
        max_length=32,
        description="created, enqueued, enqueue_failed, reenqueued, started, resumed, requeued, cancel_requested, "
        "cancelled, succeeded, failed, pruned (a study's pruner stopped the trial) or warning (a training warning: "
        "`data.warning` names it, weak_teacher or student_regressed, beside its numbers); more may come.",
    )
    reason: str | None
    data: dict[str, Any] | None

    @classmethod
    def of(cls, event: JobEvent) -> EventOut:
        """Build from the ORM row."""
        return cls(id=event.id, at=event.at, kind=event.kind, reason=event.reason, data=event.data)


class EventList(BaseModel):
    """A job's events, oldest first."""

    items: list[EventOut]


class MetricPointOut(BaseModel):
    """One value of a named series."""

    step: int
    epoch: int | None
    name: MetricName
    value: float

    @classmethod
    def of(cls, point: MetricPoint) -> MetricPointOut:
        """Build from the ORM row."""
        return cls(step=point.step, epoch=point.epoch, name=point.name, value=point.value)


class MetricList(BaseModel):
    """Points ordered by step, then name."""

    items: list[MetricPointOut]


class ArtifactOut(BaseModel):
    """A file the job produced, with where to download it."""

    id: int
    key: str
    kind: str = Field(
        max_length=32, description="student (the export), summary, metrics, report or log (an attempt's whole log)."
    )
    size_bytes: int | None
    checksum: str | None
    created_at: dt.datetime
    url: str

    @classmethod
    def of(cls, artifact: Artifact, *, url: str) -> ArtifactOut:
        """Build from the ORM row and its download URL."""
        return cls(
            id=artifact.id,
            key=artifact.key,
            kind=artifact.kind,
            size_bytes=artifact.size_bytes,
            checksum=artifact.checksum,
            created_at=artifact.created_at,
            url=url,
        )


class ArtifactList(BaseModel):
    """A job's artifacts."""

    items: list[ArtifactOut]


class LogLineOut(BaseModel):
    """One line a job's attempt logged (its logging and Python warnings)."""

    id: int
    attempt: int
    at: dt.datetime
    level: str = Field(max_length=16, description="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    logger: str = Field(max_length=128)
    message: str

    @classmethod
    def of(cls, line: JobLogLine) -> LogLineOut:
        """Build from the ORM row."""
        return cls(
            id=line.id, attempt=line.attempt, at=line.at, level=line.level, logger=line.logger, message=line.message
        )


class LogPage(BaseModel):
    """Log lines oldest first; the database keeps each job's newest lines (the whole log of each
    attempt is an artifact of kind `log`)."""

    items: list[LogLineOut]
    next_cursor: str | None
