"""Job reads for the API: one owner's jobs, a job's events, metric points and artifacts.
No FastAPI here; functions take a SQLAlchemy session and keyword-only arguments."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.errors import NotFoundError
from jobs.models import Artifact, Job, JobEvent, JobLogLine, MetricPoint


def get_job(session: Session, *, owner_id: int, job_id: int) -> Job:
    """The owner's job; another owner's job is indistinguishable from a missing one."""
    job = session.scalars(select(Job).where(Job.id == job_id, Job.owner_id == owner_id)).one_or_none()
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    return job


def list_jobs(
    session: Session,
    *,
    owner_id: int,
    statuses: list[str],
    limit: int,
    before_id: int | None,
    name: str = "",
    study_id: int | None = None,
) -> tuple[list[Job], int | None]:
    """Newest first, filtered (statuses; ``name``: a part of the name, taken literally; one study's)
    before the limit; returns the page and the id to continue before."""
    query = select(Job).where(Job.owner_id == owner_id)
    if study_id is not None:
        query = query.where(Job.study_id == study_id)
    if statuses:
        query = query.where(Job.status.in_(statuses))
    if name:
        query = query.where(Job.name.contains(name, autoescape=True))
    if before_id is not None:
        query = query.where(Job.id < before_id)
    rows = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    return page, (page[-1].id if len(rows) > limit else None)


def list_events(session: Session, *, job_id: int) -> list[JobEvent]:
    """A job's events in the order they happened (by time, then by insertion)."""
    query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.at, JobEvent.id)
    return list(session.scalars(query))


def list_metrics(
    session: Session, *, job_id: int, names: list[str], since_step: int | None, limit: int
) -> list[MetricPoint]:
    """Points ordered by step then name; ``since_step`` is inclusive so a poller misses nothing."""
    query = select(MetricPoint).where(MetricPoint.job_id == job_id)
    if names:
        query = query.where(MetricPoint.name.in_(names))
    if since_step is not None:
        query = query.where(MetricPoint.step >= since_step)
    query = query.order_by(MetricPoint.step, MetricPoint.name, MetricPoint.id).limit(limit)
    return list(session.scalars(query))


def list_artifacts(session: Session, *, job_id: int) -> list[Artifact]:
    """A job's recorded artifacts, oldest first."""
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.id)))


def get_artifact(session: Session, *, job_id: int, artifact_id: int) -> Artifact:
    """One artifact of the job, or :class:`NotFoundError`."""
    artifact = session.get(Artifact, artifact_id)
    if artifact is None or artifact.job_id != job_id:
        raise NotFoundError(f"job {job_id} has no artifact {artifact_id}")
    return artifact


def list_log_lines(
    session: Session, *, job_id: int, after_id: int, limit: int, attempt: int | None = None
) -> list[JobLogLine]:
    """The job's kept log lines after ``after_id``, oldest first (the database keeps a recent tail)."""
    query = select(JobLogLine).where(JobLogLine.job_id == job_id, JobLogLine.id > after_id)
    if attempt is not None:
        query = query.where(JobLogLine.attempt == attempt)
    return list(session.scalars(query.order_by(JobLogLine.id).limit(limit)))


@dataclass(frozen=True)
class Marks:
    """The last metric point, event and log line id seen of a job: where a live reader goes on from."""

    point: int = 0
    event: int = 0
    line: int = 0


@dataclass
class Changes:
    """What a job gained after some :class:`Marks`, and the marks after it."""

    points: list[MetricPoint]
    events: list[JobEvent]
    lines: list[JobLogLine]
    marks: Marks
    more: bool  # a kind reached ``limit``: read again from ``marks`` for the rest


def latest_marks(session: Session, *, job_id: int) -> Marks:
    """The job's newest ids now (each one index lookup)."""
    return Marks(
        point=session.scalar(select(func.max(MetricPoint.id)).where(MetricPoint.job_id == job_id)) or 0,
        event=session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id)) or 0,
        line=session.scalar(select(func.max(JobLogLine.id)).where(JobLogLine.job_id == job_id)) or 0,
    )


def changes_after(session: Session, *, job_id: int, marks: Marks, limit: int, lines_only: bool = False) -> Changes:
    """The job's points, events and log lines after ``marks``, by id, at most ``limit`` of each."""

    def after(model: type[MetricPoint] | type[JobEvent] | type[JobLogLine], mark: int) -> list:
        query = select(model).where(model.job_id == job_id, model.id > mark).order_by(model.id).limit(limit)
        return list(session.scalars(query))

    points = [] if lines_only else after(MetricPoint, marks.point)
    events = [] if lines_only else after(JobEvent, marks.event)
    lines = after(JobLogLine, marks.line)
    return Changes(
        points=points,
        events=events,
        lines=lines,
        marks=Marks(
            point=points[-1].id if points else marks.point,
            event=events[-1].id if events else marks.event,
            line=lines[-1].id if lines else marks.line,
        ),
        more=limit in (len(points), len(events), len(lines)),
    )
