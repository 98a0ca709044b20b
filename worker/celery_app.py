"""The worker's Celery app. Start it with ``mmkd worker`` or ``celery -A worker.celery_app worker``.

The app object exists at import time (Celery's command line needs one) but reads no settings
until it is first configured: ``add_defaults`` takes a callable that runs on first use.
"""

from __future__ import annotations

import os
import tempfile

from celery import Celery, signals

from worker.config import celery_config, get_worker_settings

app = Celery("mmkd", set_as_current=False, include=["worker.tasks"])
app.add_defaults(lambda: celery_config(get_worker_settings()))


@signals.worker_init.connect
def _serve_metrics(**_: object) -> None:
    """In the main process, before the pool starts: Prometheus metrics (``MMKD_WORKER_METRICS_PORT``)."""
    port = get_worker_settings().worker_metrics_port
    if port:
        # Before prometheus_client first loads, here and so in every pool child forked from here:
        # it picks its multi-process values from this variable once, on import.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="mmkd-worker-metrics-"))
        from worker.telemetry import serve

        serve(port)


@signals.worker_process_shutdown.connect
def _forget_child(pid: int | None = None, **_: object) -> None:
    """A pool child exits: its live gauges go."""
    from worker.telemetry import child_exited

    if pid is not None:
        child_exited(int(pid))
