"""Job leases: a worker claims a job by one atomic compare-and-set UPDATE and renews the lease
while it trains. A second delivery of the same job finds it no longer queued and does nothing, so
no two workers ever train one job. Losing the lease (the reaper took the job back because renewals
stopped) makes training stop without touching the job's row again.

The lease is renewed only while training makes progress (``Liveness``): a hung loop does not keep
its job forever. The heartbeat fails a stalled or timed-out job itself, keeping its checkpoints.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.errors import MmkdError, Stalled, TimedOut
from jobs.lifecycle import transition
from jobs.models import Job
from jobs.orm import utcnow
from jobs.status import ACTIVE, JobStatus

log = logging.getLogger(__name__)


def new_lease_owner() -> str:
    """A name unique to this claim: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseLost(Exception):
    """Raised where an attempt that no longer holds its job's lease would otherwise write."""


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


def last_checkpoint(session: Session, job_id: int) -> str:
    """The end of a stalled or timed-out job's reason: the checkpoint it keeps, or that it has none."""
    key = session.scalar(select(Job.last_checkpoint_key).where(Job.id == job_id))
    return f"last checkpoint kept: {key or 'none yet'}"


def give_up(session: Session, *, lease: Lease, error: MmkdError) -> bool:
    """Fail a held job with ``error`` (its kind and message, and the checkpoint it keeps) and commit;
    False when the lease was already gone. Checkpoints are never deleted here."""
    moved = transition(
        session,
        job_id=lease.job_id,
        to=JobStatus.FAILED,
        expect=ACTIVE,
        lease_owner=lease.owner,
        reason=f"{error}; {last_checkpoint(session, lease.job_id)}",
        values={"error": error.kind},
    )
    if moved is None:
        session.rollback()
        return False
    session.commit()
    return True


class Liveness:
    """Whether an attempt is alive: training reports progress here, the heartbeat asks before renewing.

    Progress is a step, an evaluation or a checkpoint (``advanced``). A long stretch without steps
    (setup, an evaluation, a checkpoint write, the uploads) is bracketed by ``busy`` and counts as
    progress while it lasts, for at most ``busy_seconds`` (a hung upload or evaluation stalls too).
    An attempt has stalled after ``stall_seconds`` without progress outside
    such a stretch; it has timed out ``max_minutes`` after it was claimed. Monotonic clock; shared
    by the training thread and the heartbeat thread.
    """

    def __init__(
        self, *, stall_seconds: float, busy_seconds: float = 3600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stall_seconds = stall_seconds
        self.busy_seconds = busy_seconds
        self.max_minutes: float | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._started = self._last = clock()
        self._last_done = "the claim"
        self._busy: list[str] = []
        self._busy_since = 0.0

    def limit(self, max_minutes: float | None) -> None:
        """The attempt's time limit (``train.max_minutes``, known once the spec is read), counted from the claim."""
        self.max_minutes = max_minutes

    def advanced(self, what: str) -> None:
        """Training moved forward (``what``: "step 12", "checkpoint at step 20")."""
        with self._lock:
            self._last, self._last_done = self._clock(), what

    @contextmanager
    def busy(self, what: str) -> Iterator[None]:
        """A stretch that is progress without steps; the stall clock restarts when it ends."""
        with self._lock:
            if not self._busy:
                self._busy_since = self._clock()
            self._busy.append(what)
        try:
            yield
        finally:
            with self._lock:
                self._busy.remove(what)
                self._last = self._clock()

    def where(self) -> str:
        """What the attempt is doing: the stretch it is in, or the last progress it made."""
        with self._lock:
            return f"during {self._busy[-1]}" if self._busy else f"after {self._last_done}"

    def past_deadline(self, grace_seconds: float = 0.0) -> bool:
        """True once the attempt ran ``max_minutes`` (plus ``grace_seconds``) since its claim."""
        limit = self.max_minutes
        return limit is not None and self._clock() - self._started > limit * 60 + grace_seconds

    def verdict(self) -> MmkdError | None:
        """Why the heartbeat must end the attempt, or None while it is alive.

        A loop past its deadline stops itself at the next step boundary (the tracker raises
        :class:`TimedOut`); the heartbeat ends it only if it still runs ``stall_seconds`` later.
        """
        with self._lock:
            now = self._clock()
            busy_for = now - self._busy_since if self._busy else 0.0
            idle = 0.0 if self._busy else now - self._last
        if idle > self.stall_seconds:
            return Stalled(idle, self.stall_seconds, self.where())
        if busy_for > self.busy_seconds:  # a stretch without steps may be long, not endless
            return Stalled(busy_for, self.busy_seconds, self.where(), setting="MMKD_BUSY_SECONDS")
        if self.past_deadline(grace_seconds=self.stall_seconds):
            return TimedOut(self.max_minutes or 0.0, self.where())
        return None


class Heartbeat:
    """A daemon thread that renews a lease every ``interval`` seconds while the attempt is alive.

    ``lost`` is set when a renewal finds the lease gone; the tracker then stops training and the
    runner writes nothing more. When ``liveness`` gives a verdict (stalled, timed out) the heartbeat
    stops renewing, sets ``lost`` first (so the training thread, should it wake, writes nothing),
    fails the job itself by compare-and-set on its lease, and calls ``on_give_up`` to end the stuck
    attempt. Renewal errors (a database blip) are logged and retried at the next beat; the lease is
    long enough to survive a few missed beats.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        lease: Lease,
        *,
        lease_seconds: float,
        interval: float,
        liveness: Liveness,
        on_give_up: Callable[[], None],
        on_renewed: Callable[[], None] = lambda: None,
    ) -> None:
        self.sessions = sessions
        self.on_renewed = on_renewed
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.liveness = liveness
        self.on_give_up = on_give_up
        self.lost = threading.Event()
        self._verdict: MmkdError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self._beat():
                    return
            except Exception:
                log.exception("job %s: lease renewal failed; retrying", self.lease.job_id)

    def _beat(self) -> bool:
        """Renew, or give up; True when there is nothing more to do (lease lost or job failed)."""
        self._verdict = self._verdict or self.liveness.verdict()  # once given up, never renewed again
        with self.sessions() as session:
            if self._verdict is None:
                if renew(session, lease=self.lease, lease_seconds=self.lease_seconds):
                    self.on_renewed()
                    return False
                log.warning("job %s: lease %s lost", self.lease.job_id, self.lease.owner)
                self.lost.set()
                return True
            self.lost.set()
            failed = give_up(session, lease=self.lease, error=self._verdict)
        outcome = "failed" if failed else "its lease was already gone"
        log.error("job %s attempt %s %s: %s", self.lease.job_id, self.lease.attempt, outcome, self._verdict)
        self.on_give_up()
        return True

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
