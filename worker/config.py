"""Worker settings and the Celery configuration built from them.

The worker reads the common settings (``settings.Settings``: database, broker, storage,
``max_attempts``, ``lease_seconds``) plus a few of its own, all from ``MMKD_*`` environment
variables, once. It knows nothing of the API's settings (auth, host, threads).

Broker redelivery. Tasks are acknowledged late (after the job ends) and rejected when the worker
process is lost, so a message is not dropped when a worker dies. With Redis, a message that stays
unacknowledged longer than ``broker_transport_options.visibility_timeout`` (set from
``MMKD_VISIBILITY_TIMEOUT_SECONDS``, default 2 h) is delivered again even while its job still runs.
That second delivery is harmless: the job's lease is held, so it exits without training. Set the
timeout longer than a typical job to avoid pointless redeliveries; recovery from dead workers does
not depend on it, because the reaper re-enqueues jobs whose lease expired. kombu's SQLAlchemy
transport (the embedded broker) never redelivers a message it handed out, so there the reaper is
the only recovery path.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field

from jobs.publish import TRAIN_TASK, Queue
from settings import Settings


class WorkerSettings(Settings):
    """The common settings plus what only the worker and the reaper need."""

    heartbeat_seconds: float = Field(
        default=0.0, ge=0.0, description="Lease renewal period; 0 means a quarter of lease_seconds."
    )
    stall_seconds: float = Field(
        default=600.0,
        gt=0.0,
        description="A job whose training shows no progress this long fails as stalled (its lease is not renewed).",
    )
    busy_seconds: float = Field(
        default=3600.0,
        gt=0.0,
        description="Longest stretch without steps (data read, evaluation, checkpoint, upload) before it is stalled.",
    )
    rank_restarts: int = Field(
        default=1,
        ge=0,
        le=10,
        description="A job on several processes: times torchrun restarts every rank after one crashed "
        "(they resume from the newest checkpoint) before the attempt fails.",
    )
    cancel_poll_seconds: float = Field(default=1.0, gt=0.0, description="How often training reads the status.")
    metrics_flush_seconds: float = Field(default=2.0, gt=0.0, description="Metric points are written in batches.")
    visibility_timeout_seconds: int = Field(default=7200, ge=60, description="Redis redelivery timeout.")
    max_tasks_per_child: int = Field(
        default=1, ge=0, description="Jobs per worker child process (1 frees all GPU memory); 0 = no limit."
    )
    reaper_interval_seconds: float = Field(default=15.0, gt=0.0, description="Pause between reaper passes.")
    requeue_after_seconds: float = Field(
        default=600.0, gt=0.0, description="A job queued this long without a worker is published again."
    )
    retry_delay_seconds: float = Field(default=10.0, ge=0.0, description="Delay before retrying a job.")
    max_running_per_owner: int = Field(
        default=8, ge=1, description="Jobs of one owner running at once; more wait queued (checked before a start)."
    )
    running_limit_delay_seconds: float = Field(
        default=30.0, gt=0.0, description="A job held back by its owner's running limit is offered again after this."
    )
    log_flush_seconds: float = Field(default=1.0, gt=0.0, description="How often a job's log lines are written.")
    log_tail_lines: int = Field(default=2000, ge=10, description="Log lines the database keeps per job (the newest).")
    max_log_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="An attempt's stored log stops at this size, with a note."
    )
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Serve Prometheus metrics on this port; 0 serves none."
    )
    work_dir: Path | None = Field(default=None, description="Scratch space for running jobs; default home/work.")

    @property
    def resolved_heartbeat_seconds(self) -> float:
        """The lease renewal period."""
        return self.heartbeat_seconds or self.lease_seconds / 4

    @property
    def resolved_work_dir(self) -> Path:
        """Where jobs write their files before upload."""
        return (self.work_dir or self.home / "work").resolve()


@lru_cache(maxsize=1)
def get_worker_settings() -> WorkerSettings:
    """The worker process's settings, read from the environment on first use."""
    return WorkerSettings()


def celery_config(settings: WorkerSettings) -> dict[str, Any]:
    """Celery settings (new lowercase names) for the broker in ``settings``."""
    broker_url = settings.resolved_broker_url
    config: dict[str, Any] = {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,  # the database holds job state; no result backend
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": settings.max_tasks_per_child or None,
        "worker_hijack_root_logger": False,
        "task_default_queue": Queue.GPU.value,
        "task_routes": {TRAIN_TASK: {"queue": Queue.GPU.value}},
    }
    if broker_url.startswith(("redis://", "rediss://")):
        config["broker_transport_options"] = {"visibility_timeout": settings.visibility_timeout_seconds}
    return config
