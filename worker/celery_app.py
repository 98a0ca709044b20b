"""The worker's Celery app. Start it with ``mmkd worker`` or ``celery -A worker.celery_app worker``.

The app object exists at import time (Celery's command line needs one) but reads no settings
until it is first configured: ``add_defaults`` takes a callable that runs on first use.
"""

from __future__ import annotations

from celery import Celery

from service.queues import TRAIN_TASK
from worker.config import celery_config, get_worker_settings

app = Celery("mmkd", set_as_current=False, include=["worker.tasks"])
app.add_defaults(lambda: celery_config(get_worker_settings()))


def enqueue_training(job_id: int, *, countdown: float | None = None) -> None:
    """Publish the training task for ``job_id`` (routed to the ``gpu`` queue)."""
    app.send_task(TRAIN_TASK, args=[job_id], countdown=countdown)
