"""Helpers shared by tests in several folders (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.models import Job, MetricPoint

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    """True while process ``pid`` runs; a zombie waiting for its parent counts as ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


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


def fuzz_budget(default: int, long: int) -> int:
    """Examples per fuzzer: ``default`` in the suite, ``long`` under ``make fuzz`` (``MMKD_FUZZ=long``)."""
    import os

    return long if os.environ.get("MMKD_FUZZ") == "long" else default
