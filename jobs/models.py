"""Jobs, their events, metric points and artifacts; studies; owners, keys and uploaded datasets. Imports
only SQLAlchemy, so the worker can use these models without the web stack."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import CheckConstraint, Float, ForeignKey, Index, String, Text, TypeDecorator, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from jobs.orm import Base, BigId, JsonDoc, UtcDateTime, utcnow
from jobs.status import JobStatus, StudyStatus


class StatusType(TypeDecorator[JobStatus]):
    """A job status stored as its plain name and read back as a :class:`JobStatus`."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: JobStatus | str | None, dialect: Any) -> str | None:
        """Store the name; an unknown one fails here, before the database's check constraint."""
        return None if value is None else JobStatus(value).value

    def process_result_value(self, value: str | None, dialect: Any) -> JobStatus | None:
        """Read back as the enum."""
        return None if value is None else JobStatus(value)


class StudyStatusType(TypeDecorator[StudyStatus]):
    """A study status stored as its plain name and read back as a :class:`StudyStatus`."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: StudyStatus | str | None, dialect: Any) -> str | None:
        """Store the name; an unknown one fails here."""
        return None if value is None else StudyStatus(value).value

    def process_result_value(self, value: str | None, dialect: Any) -> StudyStatus | None:
        """Read back as the enum."""
        return None if value is None else StudyStatus(value)


class Study(Base):
    """A search over job specs (``studies``): its validated study spec, the Optuna study that samples it
    (in the study storage, ``migrations.study_storage``), where it stands and, once done, its winner.
    Its trials and finalists are ordinary jobs that point back here (``Job.study_id``)."""

    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key"),
        Index("ix_studies_owner_id_id", "owner_id", "id"),
        Index("ix_studies_status", "status"),
        CheckConstraint("status IN ({})".format(", ".join(f"'{s.value}'" for s in StudyStatus)), name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    spec_hash: Mapped[str] = mapped_column(String(64))
    optuna_name: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[StudyStatus] = mapped_column(StudyStatusType(), default=StudyStatus.RUNNING)
    status_reason: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))


class Job(Base):
    """One training run: the validated spec, where it stands, and what it produced."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key"),
        Index("ix_jobs_owner_id_id", "owner_id", "id"),
        Index("ix_jobs_owner_id_status_id", "owner_id", "status", "id"),
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
        Index("ix_jobs_study_id_trial_number", "study_id", "trial_number"),
        # A backstop under the study's row lock: one job per trial and seed, one finalist per seed.
        Index("uq_jobs_study_trial_seed", "study_id", "trial_number", "seed", unique=True),
        Index(
            "uq_jobs_study_finalist_seed",
            "study_id",
            "seed",
            unique=True,
            postgresql_where=text("trial_number IS NULL AND study_id IS NOT NULL"),
            sqlite_where=text("trial_number IS NULL AND study_id IS NOT NULL"),
        ),
        CheckConstraint("status IN ({})".format(", ".join(f"'{s.value}'" for s in JobStatus)), name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    spec_hash: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int]
    status: Mapped[JobStatus] = mapped_column(StatusType(), default=JobStatus.QUEUED)
    status_reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int]
    epoch: Mapped[int | None]
    step: Mapped[int | None]
    total_epochs: Mapped[int | None]
    total_steps: Mapped[int | None]
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    latest_metrics: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    queued_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    started_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    last_checkpoint_key: Mapped[str | None] = mapped_column(String(1024))
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    #: The Optuna trial this job trains (one job per seed of it); null for a study's finalists.
    trial_number: Mapped[int | None]


class JobEvent(Base):
    """A state transition or a notable moment (enqueued, resumed, enqueue_failed) with its reason."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)


class MetricPoint(Base):
    """One value of one named series at one step: ``train/<loss term>`` (``train/total``...) or
    ``val/<network>/<metric>`` (``val/student/accuracy``...); ``core.metrics`` owns the names. These
    rows are the record: the job's ``metrics.jsonl`` and report are rendered from them."""

    __tablename__ = "metric_points"
    __table_args__ = (Index("ix_metric_points_job_id_name_step", "job_id", "name", "step"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int]
    epoch: Mapped[int | None]
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)


class Artifact(Base):
    """A file a finished job published (``kind``: student export, summary, metrics, report), recorded
    after the write. Checkpoints are not artifacts: the job's ``last_checkpoint_key`` names the newest."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(1024))
    kind: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int | None] = mapped_column(BigId)
    checksum: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Owner(Base):
    """Who jobs belong to; every API key acts for one owner."""

    __tablename__ = "owners"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ApiKey(Base):
    """A bearer token; only its hash is stored, the prefix identifies it in listings."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())


class Dataset(Base):
    """An uploaded .npz, validated once at upload; ``summary`` says what it holds (modalities with
    per-sample shapes and dtypes, label, split sizes). The row is written after the object.
    A sharded dataset's ``key`` is its folder (ending in ``/``) and its summary has ``shards``."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_owner_id_id", "owner_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigId)
    sha256: Mapped[str] = mapped_column(String(64))
    n_samples: Mapped[int]
    summary: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class DatasetUpload(Base):
    """A presigned multipart upload to S3 in progress: its parts go to ``key`` (a temporary object)
    until the owner completes it (validated, then stored as a :class:`Dataset`) or aborts it.

    A sharded upload (``files`` set) sends each file of a folder of shards as a multipart upload of
    its own to ``key`` + the file's name (``key`` is then the dataset's folder, ending in ``/``);
    ``files`` holds each one's name, size, multipart id and part count. ``claimed_at``: when a
    completion or an abort took the upload (None: open)."""

    __tablename__ = "dataset_uploads"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(1024))
    multipart_id: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigId)
    part_size: Mapped[int] = mapped_column(BigId)
    files: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonDoc, nullable=True)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime(), nullable=True)  # a completion or abort
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class JobLogLine(Base):
    """One line a job's attempt logged (its own logging and Python warnings), with its level and
    logger. The database keeps a recent tail per job; each attempt's whole log is stored with the
    job's artifacts (kind ``log``)."""

    __tablename__ = "job_log_lines"
    __table_args__ = (Index("ix_job_log_lines_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int]
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    level: Mapped[str] = mapped_column(String(16))
    logger: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
