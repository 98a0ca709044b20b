"""Helpers shared by tests in several folders (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.models import Job, MetricPoint


def add_metric_points(
    session: Session, *, job_id: int, step: int, epoch: int | None, values: Mapping[str, float]
) -> None:
    """Play the worker's tracker: one point per value at ``step`` and the job's latest metrics (not committed)."""
    session.add_all(
        MetricPoint(job_id=job_id, step=step, epoch=epoch, name=name, value=float(value))
        for name, value in values.items()
    )
    job = session.scalars(select(Job).where(Job.id == job_id)).one()
    job.latest_metrics = {**(job.latest_metrics or {}), **{k: float(v) for k, v in values.items()}}
