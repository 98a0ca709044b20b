"""The worker's Celery app. Start it with ``mmkd worker`` or ``celery -A worker.celery_app worker``.

The app object exists at import time (Celery's command line needs one) but reads no settings
until it is first configured: ``add_defaults`` takes a callable that runs on first use.
"""

from __future__ import annotations

from celery import Celery

from worker.config import celery_config, get_worker_settings

app = Celery("mmkd", set_as_current=False, include=["worker.tasks"])
app.add_defaults(lambda: celery_config(get_worker_settings()))
