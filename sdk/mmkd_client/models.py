"""Typed views of the API's responses. Unknown fields are ignored so newer servers stay readable."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: A job's final statuses (``pruned``: a study's trial its pruner stopped early).
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "pruned"})
#: A study's final statuses.
STUDY_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Progress(_Model):
    """How far a running job is."""

    epoch: int | None = None
    step: int | None = None
    total_epochs: int | None = None
    total_steps: int | None = None
    eta_seconds: float | None = None


class JobSummary(_Model):
    """A job as listed."""

    id: int
    name: str
    status: str
    status_reason: str | None = None
    owner: str
    spec_hash: str
    seed: int
    attempts: int
    max_attempts: int
    progress: Progress = Field(default_factory=Progress)
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    study_id: int | None = None
    trial_number: int | None = None

    @property
    def done(self) -> bool:
        """Whether the job reached a final status."""
        return self.status in TERMINAL


class Job(JobSummary):
    """A job with its spec, latest metrics, result and error."""

    spec: dict[str, Any]
    latest_metrics: dict[str, float] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    queued_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    last_checkpoint_key: str | None = None


class Event(_Model):
    """A state transition or notable moment."""

    id: int
    at: dt.datetime
    kind: str
    reason: str | None = None
    data: dict[str, Any] | None = None


class MetricPoint(_Model):
    """One value of a named series."""

    step: int
    epoch: int | None = None
    name: str
    value: float


class LogLine(_Model):
    """One line a job's attempt logged."""

    id: int
    attempt: int
    at: dt.datetime
    level: str
    logger: str
    message: str


class Artifact(_Model):
    """A file the job produced and where to download it."""

    id: int
    key: str
    kind: str
    size_bytes: int | None = None
    checksum: str | None = None
    created_at: dt.datetime
    url: str

    @property
    def filename(self) -> str:
        """The last part of the key."""
        return self.key.rstrip("/").rsplit("/", 1)[-1]


class Modality(_Model):
    """One modality of a dataset: its per-sample shape and stored dtype."""

    shape: list[int]
    dtype: str


class DatasetLabel(_Model):
    """A dataset's label: ``classes``, ``multilabel`` (0/1 rows) or ``continuous``."""

    kind: str
    shape: list[int] = Field(default_factory=list)
    labelled: int
    classes: int | None = None


class Dataset(_Model):
    """An uploaded dataset and the summary its validation produced."""

    id: int
    name: str
    size_bytes: int
    sha256: str
    n_samples: int
    modalities: dict[str, Modality]
    label: DatasetLabel | None = None
    splits: dict[str, int] | None = None
    shards: dict[str, Any] | None = None  # a sharded dataset's layout ("npz" or "npy") and file count
    created_at: dt.datetime


class StudySummary(_Model):
    """A study as listed."""

    id: int
    name: str
    status: str
    status_reason: str | None = None
    owner: str
    created_at: dt.datetime
    finished_at: dt.datetime | None = None

    @property
    def done(self) -> bool:
        """Whether the study reached a final status."""
        return self.status in STUDY_TERMINAL


class Study(StudySummary):
    """A study with its spec (defaults filled in) and, once it succeeded, its result: ``winner``
    (``trial``, ``values``, ``validation``), ``metric``, ``direction``, ``student_job_id``,
    ``finalist_job_ids``, ``test``, ``gain`` (or None) and ``trials`` (counts by state). ``links``: ``self``,
    ``trials``, ``cancel``, and ``student`` (the student's job's artifacts) once it succeeded."""

    spec: dict[str, Any]
    result: dict[str, Any] | None = None
    links: dict[str, str | None] = Field(default_factory=dict)


class TrialJob(_Model):
    """One job of a trial (one per seed)."""

    id: int
    status: str
    seed: int


class Trial(_Model):
    """One trial of a study: its state (``waiting``, ``running``, ``complete``, ``pruned``, ``fail``), its
    values by spec path, its objective once complete, the last epoch it reported, and its jobs."""

    number: int
    state: str
    values: dict[str, Scalar] = Field(default_factory=dict)
    value: float | None = None
    last_epoch: int | None = None
    jobs: list[TrialJob] = Field(default_factory=list)
