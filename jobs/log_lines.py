"""A job's log lines in the database: appended in batches by the worker, trimmed to a recent tail
per job (each attempt's whole log is stored as an artifact of kind ``log``). SQLAlchemy only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from jobs.models import JobLogLine


@dataclass(frozen=True)
class LogLine:
    """One captured line, before it is stored."""

    at: dt.datetime
    level: str
    logger: str
    message: str


def append_lines(session: Session, *, job_id: int, attempt: int, lines: Sequence[LogLine]) -> None:
    """Insert ``lines`` in one statement (the caller commits)."""
    if lines:
        rows = [
            {
                "job_id": job_id,
                "attempt": attempt,
                "at": line.at,
                "level": line.level,
                "logger": line.logger,
                "message": line.message,
            }
            for line in lines
        ]
        session.execute(insert(JobLogLine), rows)


def trim_tail(session: Session, *, job_id: int, keep: int) -> int:
    """Delete all but the newest ``keep`` lines of the job; returns how many went. The boundary id is
    found with one index lookup on ``(job_id, id)``."""
    boundary = session.scalar(
        select(JobLogLine.id).where(JobLogLine.job_id == job_id).order_by(JobLogLine.id.desc()).offset(keep).limit(1)
    )
    if boundary is None:
        return 0
    result = session.execute(delete(JobLogLine).where(JobLogLine.job_id == job_id, JobLogLine.id <= boundary))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
