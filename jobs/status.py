"""The job state machine: one enum and the table of allowed moves. Every status change goes
through ``jobs.lifecycle.transition``, which consults this table.

    queued -> running -> succeeded | failed | cancelled | pruned
                  \\-> cancelling -> cancelled | succeeded | failed
    running -> queued: a redelivery after a lost lease or a retryable failure

``pruned`` ends a study's trial that its pruner stopped early (``studies``): not a failure, and not
the owner's cancel. A study moves only forward: ``running`` until its trials and finalists are done.
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
    PRUNED = "pruned"

    @property
    def terminal(self) -> bool:
        """Nothing follows a terminal status."""
        return self in TERMINAL


#: Finished: no transition leaves these.
TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PRUNED})
#: A worker holds the job under a lease.
ACTIVE = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING})

#: Which status may follow which.
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.QUEUED,
            JobStatus.CANCELLING,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.PRUNED,
        }
    ),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.PRUNED: frozenset(),
}

#: The event each transition records.
EVENT_FOR_STATUS: dict[JobStatus, str] = {
    JobStatus.QUEUED: "requeued",
    JobStatus.RUNNING: "started",
    JobStatus.CANCELLING: "cancel_requested",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.PRUNED: "pruned",
}


def sources(target: JobStatus) -> frozenset[JobStatus]:
    """The statuses from which ``target`` may be reached."""
    return frozenset(source for source, targets in ALLOWED.items() if target in targets)


class StudyStatus(enum.StrEnum):
    """Where a study stands: ``running`` while it has trials or finalists to run, then one terminal."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Nothing follows a terminal status."""
        return self != StudyStatus.RUNNING
