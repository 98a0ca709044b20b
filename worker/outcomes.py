"""How a job's attempt ends: each exception becomes a status, a reason a person can act on, and a
decision to retry or not. Deterministic failures (bad data, bad spec, a diverging loss, out of
memory) are never retried; storage outages are retried while attempts remain."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from core.errors import MmkdError, StorageError, TrainingCancelled
from core.spec import describe_validation_error
from service.jobs.service import transition
from worker.leases import Lease, load_owned

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """The end of one attempt: ``status`` is cancelled, failed or queued (retry)."""

    status: str
    kind: str
    reason: str


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"


def classify(error: BaseException, *, attempt: int, max_attempts: int) -> Outcome:
    """Map an exception raised by an attempt to its outcome."""
    if isinstance(error, TrainingCancelled):
        return Outcome("cancelled", "cancelled", f"cancelled by the owner at step {error.step}")
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

    A retry of a job that is being cancelled is a cancel instead.
    """
    with sessions() as session:
        job = load_owned(session, lease)
        if job is None:
            session.rollback()
            log.warning("job %s: lease %s lost; leaving the job to its new owner", lease.job_id, lease.owner)
            return "lease_lost"
        status = outcome.status
        if job.status == "cancelling" and status != "failed":
            status = "cancelled"
        reason = outcome.reason if status == outcome.status else f"cancelled ({outcome.reason})"
        transition(session, job=job, to_status=status, reason=reason)
        job.error = None if status == "cancelled" else outcome.kind
        session.commit()
    return status
