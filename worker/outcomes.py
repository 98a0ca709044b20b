"""How a job's attempt ends: each exception becomes a status, a reason a person can act on, and a
decision to retry or not. Deterministic failures (bad data, bad spec, a diverging loss, out of
memory) are never retried; storage outages are retried while attempts remain."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from core.errors import MmkdError, Pruned, StorageError, TrainingCancelled
from core.spec import describe_validation_error
from jobs.leases import Lease
from jobs.lifecycle import transition
from jobs.status import JobStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """The end of one attempt: ``status`` is cancelled, pruned, failed or queued (retry)."""

    status: str
    kind: str
    reason: str


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"


def classify(error: BaseException, *, attempt: int, max_attempts: int) -> Outcome:
    """Map an exception raised by an attempt to its outcome."""
    if isinstance(error, TrainingCancelled):
        return Outcome("cancelled", "cancelled", f"cancelled by the owner at step {error.step}")
    if isinstance(error, Pruned):
        return Outcome("pruned", "pruned", str(error))
    if isinstance(error, StorageError):
        if attempt < max_attempts:
            return Outcome("queued", error.kind, f"storage error on attempt {attempt}, retrying: {error}")
        reason = f"storage unreachable after retries ({attempt} attempts): {error}"
        return Outcome("failed", error.kind, reason)
    if isinstance(error, ValidationError):
        return Outcome("failed", "invalid_spec", "invalid spec: " + "; ".join(describe_validation_error(error)))
    if isinstance(error, MmkdError):
        return Outcome("failed", error.kind, str(error))
    if _is_out_of_memory(error):
        hint = "reduce train.batch_size or model.hidden_dim, or run on a device with more memory"
        return Outcome("failed", "out_of_memory", f"out of memory: {str(error)[:300]}; {hint}")
    return Outcome("failed", "internal", f"internal error: {type(error).__name__}: {str(error)[:500]}")


def record(sessions: sessionmaker[Session], lease: Lease, outcome: Outcome) -> str:
    """Write the outcome if this lease still owns the job; returns what was recorded.

    A retry, a cancel or a prune of a job that is being cancelled ends it as ``cancelled``; a failure
    stays a failure. Each write is a compare-and-set on the lease, so a worker that lost its job records
    nothing.
    """
    target = JobStatus(outcome.status)
    error = None if target in (JobStatus.CANCELLED, JobStatus.PRUNED) else outcome.kind
    with sessions() as session:
        if target == JobStatus.FAILED:
            moved = _end(session, lease, target, {JobStatus.RUNNING, JobStatus.CANCELLING}, outcome.reason, error)
        else:
            moved = _end(session, lease, target, {JobStatus.RUNNING}, outcome.reason, error)
            if moved is None:
                target = JobStatus.CANCELLED
                reason = outcome.reason if outcome.status == target else f"cancelled ({outcome.reason})"
                moved = _end(session, lease, target, {JobStatus.CANCELLING}, reason, None)
        if moved is None:
            session.rollback()
            log.warning("job %s: lease %s lost; leaving the job to its new owner", lease.job_id, lease.owner)
            return "lease_lost"
        session.commit()
    return target.value


def _end(
    session: Session, lease: Lease, to: JobStatus, expect: set[JobStatus], reason: str, error: str | None
) -> int | None:
    return transition(
        session,
        job_id=lease.job_id,
        to=to,
        expect=expect,
        lease_owner=lease.owner,
        reason=reason,
        values={"error": error},
    )
