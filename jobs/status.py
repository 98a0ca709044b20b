"""The job state machine: one enum and the table of allowed moves. Every status change goes
through ``jobs.lifecycle.transition``, which consults this table.

    queued -> running -> succeeded | failed | cancelled
                  \\-> cancelling -> cancelled | succeeded | failed
    running -> queued: a redelivery after a lost lease or a retryable failure
"""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    """Where a job stands."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Nothing follows a terminal status."""
        return self in TERMINAL


#: Finished: no transition leaves these.
TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
#: A worker holds the job under a lease.
ACTIVE = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING})

#: Which status may follow which.
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.QUEUED, JobStatus.CANCELLING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

#: The event each transition records.
EVENT_FOR_STATUS: dict[JobStatus, str] = {
    JobStatus.QUEUED: "requeued",
    JobStatus.RUNNING: "started",
    JobStatus.CANCELLING: "cancel_requested",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}


def sources(target: JobStatus) -> frozenset[JobStatus]:
    """The statuses from which ``target`` may be reached."""
    return frozenset(source for source, targets in ALLOWED.items() if target in targets)
