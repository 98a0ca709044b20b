"""Per-owner limits on jobs: how many may wait queued, and how many may run at once.

Where each is enforced, and why there:
- Queued (``MMKD_MAX_QUEUED_PER_OWNER``): the submit counts the owner's queued jobs inside its own
  transaction, after its insert, and rolls back with a 429 beyond the limit. Concurrent submits of
  one owner cannot see each other's uncommitted rows, so a burst may overshoot by at most the
  submits in flight at that moment (one per API handler thread); no lock serialises an owner's
  submits, which would cap them at one durable commit at a time.
- Running (``MMKD_MAX_RUNNING_PER_OWNER``): a job starts running only in a worker, so the API could
  only count. The worker's main process asks :func:`start_verdict` before it hands a message to a
  child; a job over its owner's limit is held back (``jobs.lifecycle.hold_back``): it stays queued
  and is offered again after a delay, it does not fail. Two workers starting the same owner's jobs
  at the same instant may both pass, so this is a soft limit too (overshoot at most one per worker).
"""

from __future__ import annotations

import enum

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from core.spec import JobSpec
from jobs.errors import InvalidRequestError, LimitExceededError
from jobs.models import Job
from jobs.status import ACTIVE, JobStatus

#: What a 429 for the queued limit tells the client to wait before trying again.
QUEUED_LIMIT_RETRY_AFTER_SECONDS = 30


def check_resources(
    spec: JobSpec, *, max_procs_per_node: int, gpus_per_node: int | None, multi_node: bool, at: str = ""
) -> None:
    """Refuse resources the workers do not offer (422 naming the field): more processes on a host than
    ``MMKD_MAX_PROCS_PER_NODE``, more GPUs than ``MMKD_GPUS_PER_NODE``, several hosts without a Ray
    cluster (``MMKD_RAY_ADDRESS``). ``at`` prefixes the paths (a study's ``base.``)."""
    wanted = spec.resources
    errors = []
    if wanted.procs_per_node > max_procs_per_node:
        errors.append(
            {
                "path": "resources.procs_per_node",
                "message": f"this service runs at most {max_procs_per_node} processes of a job on one host",
            }
        )
    if wanted.device == "cuda" and gpus_per_node is not None and wanted.procs_per_node > gpus_per_node:
        offer = f"{gpus_per_node} GPUs" if gpus_per_node else "no GPUs"
        errors.append({"path": "resources.device", "message": f"this service's workers offer {offer} a host"})
    if wanted.nodes > 1 and not multi_node:
        errors.append({"path": "resources.nodes", "message": "this service has no multi-host cluster: nodes must be 1"})
    if errors:
        raise InvalidRequestError([{**error, "path": at + error["path"]} for error in errors])


def check_queued_limit(session: Session, *, owner_id: int, max_queued: int) -> None:
    """Raise :class:`LimitExceededError` when the owner has more than ``max_queued`` queued jobs.

    Call it after inserting the new job, in the same transaction: the count includes it.
    """
    # Counts at most max_queued + 1 index entries, however many jobs wait: the cost stays bounded.
    waiting = select(Job.id).where(Job.owner_id == owner_id, Job.status == JobStatus.QUEUED).limit(max_queued + 1)
    queued = session.scalar(select(func.count()).select_from(waiting.subquery()))
    if queued is not None and queued > max_queued:
        raise LimitExceededError(
            f"this owner already has {queued - 1} queued jobs, the most allowed (MMKD_MAX_QUEUED_PER_OWNER="
            f"{max_queued}); submit again when some have started, or cancel some",
            retry_after_seconds=QUEUED_LIMIT_RETRY_AFTER_SECONDS,
        )


class Verdict(enum.StrEnum):
    """What a worker does with a delivered train message."""

    START = "start"  # hand it to a child, which claims the job
    SKIP = "skip"  # the claim could not succeed (cancelled, finished, running, no attempts left)
    HOLD = "hold"  # the owner is at the running limit: keep it queued, offer it again later


def start_verdict(session: Session, *, job_id: int, max_running: int) -> tuple[Verdict, str]:
    """One read: may a worker start ``job_id`` now? Returns the verdict and why (a phrase that
    follows "job N", e.g. "is not queued (it is cancelled)").

    Mirrors the claim's conditions (queued, attempts left), so a skipped message is one the claim
    would have refused anyway; the claim itself stays the only compare-and-set.
    """
    other = aliased(Job)
    active = (
        select(func.count())
        .select_from(other)
        .where(other.owner_id == Job.owner_id, other.status.in_(ACTIVE))
        .scalar_subquery()
    )
    row = session.execute(
        select(Job.status, Job.attempts, Job.max_attempts, active).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        return Verdict.SKIP, "does not exist"
    status, attempts, max_attempts, running = row
    if status != JobStatus.QUEUED:
        return Verdict.SKIP, f"is not queued (it is {status})"
    if attempts >= max_attempts:
        return Verdict.SKIP, f"has no attempts left ({attempts} of {max_attempts})"
    if running >= max_running:
        return Verdict.HOLD, f"its owner has {running} jobs running, the most allowed (MMKD_MAX_RUNNING_PER_OWNER)"
    return Verdict.START, "queued"
