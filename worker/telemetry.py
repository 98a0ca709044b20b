"""The worker's Prometheus metrics, served by each ``mmkd worker`` on ``MMKD_WORKER_METRICS_PORT``
(0, the default, serves none).

Jobs run in Celery's prefork children, so the values live in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh
folder per worker, set in the main process before the pool forks: ``worker.celery_app``) and the main
process's HTTP server sums every child's; a child that exits is marked dead so its gauges go.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)
SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

JOBS_STARTED = Counter("mmkd_worker_jobs_started_total", "Job attempts this worker claimed.")
JOBS_FINISHED = Counter(
    "mmkd_worker_jobs_finished_total",
    "Job attempts ended, by outcome (succeeded, failed, queued for a retry, cancelled, lease_lost...).",
    ["outcome"],
)
FAILURES = Counter("mmkd_worker_failures_total", "Failed or retried attempts, by reason.", ["reason"])
STEP_SECONDS = Histogram("mmkd_worker_step_seconds", "Wall time of one training step.", buckets=SECONDS)
CHECKPOINT_SECONDS = Histogram("mmkd_worker_checkpoint_seconds", "Time to write one checkpoint.", buckets=SECONDS)
UPLOAD_SECONDS = Histogram("mmkd_worker_upload_seconds", "Time to publish a job's results.", buckets=SECONDS)
QUEUE_WAIT_SECONDS = Histogram(
    "mmkd_worker_queue_wait_seconds", "From a job's queueing to its claim.", buckets=(*SECONDS, 900.0, 3600.0)
)
LEASE_RENEWALS = Counter("mmkd_worker_lease_renewals_total", "Lease renewals by the heartbeat.")


def serve(port: int) -> None:
    """In the worker's main process, before the pool forks (``PROMETHEUS_MULTIPROC_DIR`` set): the
    HTTP server of every child's metrics."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    start_http_server(port, registry=registry)
    log.info("worker metrics on :%d/metrics (from %s)", port, folder)


def child_exited(pid: int) -> None:
    """Drop an exited pool child's live gauges (counters and histograms keep their totals)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
