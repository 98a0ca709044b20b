"""Job leases: a worker claims a job by one atomic compare-and-set UPDATE and renews the lease
while it trains. A second delivery of the same job finds it no longer queued and does nothing, so
no two workers ever train one job. Losing the lease (the reaper took the job back because renewals
stopped) makes training stop without touching the job's row again.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from jobs.lifecycle import transition
from jobs.models import Job
from jobs.orm import utcnow
from jobs.status import ACTIVE, JobStatus

log = logging.getLogger(__name__)


def new_lease_owner() -> str:
    """A name unique to this claim: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Lease:
    """A held claim on a job."""

    job_id: int
    owner: str
    attempt: int
    max_attempts: int


def claim(session: Session, *, job_id: int, owner: str, lease_seconds: float) -> Lease | None:
    """Move the job queued -> running with a lease, or return None when another delivery has it.

    The transition is the compare-and-set: it matches only while the job is queued with attempts
    left, so of concurrent claims exactly one changes the row (no read before the write, which
    also lets SQLite take its write lock at once instead of upgrading a read lock).
    """
    now = utcnow()
    attempt = transition(
        session,
        job_id=job_id,
        to=JobStatus.RUNNING,
        expect={JobStatus.QUEUED},
        where=[Job.attempts < Job.max_attempts],
        values={
            "attempts": Job.attempts + 1,
            "lease_owner": owner,
            "lease_expires_at": now + dt.timedelta(seconds=lease_seconds),
        },
        reason=f"claimed by {owner}",
    )
    if attempt is None:
        session.rollback()
        return None
    max_attempts = session.scalar(select(Job.max_attempts).where(Job.id == job_id))
    session.commit()
    return Lease(job_id=job_id, owner=owner, attempt=attempt, max_attempts=int(max_attempts or attempt))


def renew(session: Session, *, lease: Lease, lease_seconds: float) -> bool:
    """Push the lease's expiry forward; False when the lease is no longer ours."""
    now = utcnow()
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(Job)
        .where(Job.id == lease.job_id, Job.lease_owner == lease.owner, Job.status.in_(ACTIVE))
        .values(lease_expires_at=now + dt.timedelta(seconds=lease_seconds), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


class Heartbeat:
    """A daemon thread that renews a lease every ``interval`` seconds until stopped.

    ``lost`` is set when a renewal finds the lease gone; the tracker then stops training.
    Renewal errors (a database blip) are logged and retried at the next beat; the lease is long
    enough to survive a few missed beats.
    """

    def __init__(self, sessions: sessionmaker[Session], lease: Lease, *, lease_seconds: float, interval: float) -> None:
        self.sessions = sessions
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.sessions() as session:
                    if not renew(session, lease=self.lease, lease_seconds=self.lease_seconds):
                        log.warning("job %s: lease %s lost", self.lease.job_id, self.lease.owner)
                        self.lost.set()
                        return
            except Exception:
                log.exception("job %s: lease renewal failed; retrying", self.lease.job_id)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
