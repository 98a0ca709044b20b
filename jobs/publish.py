"""The one publisher of the train task, used by the API, the worker's retries and the reaper.

Publishing goes through a producer-only Celery app (names only, no worker code), so the API never
imports the worker. The task and its queue are named here; the worker registers the task under
the same name.
"""

from __future__ import annotations

import enum
from functools import lru_cache, partial
from typing import Protocol

from celery import Celery

from settings import Settings

#: The one task there is: it takes only a job id.
TRAIN_TASK = "mmkd.train"


class Queue(enum.StrEnum):
    """Broker queues; one per GPU class as the fleet grows."""

    GPU = "gpu"


class Publish(Protocol):
    """Sends the train task for one job (optionally after ``countdown`` seconds); raises on failure."""

    def __call__(self, job_id: int, *, countdown: float | None = None) -> None:
        """Publish ``mmkd.train(job_id)``."""


@lru_cache(maxsize=4)
def producer_app(broker_url: str, timeout: float) -> Celery:
    """A Celery app that only sends (one per broker URL); publishing gives up after ``timeout``."""
    app = Celery("mmkd-producer", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_connection_timeout=timeout,
        broker_connection_retry_on_startup=False,
        # Redis only: kombu's SQLAlchemy transport hands transport options to create_engine().
        broker_transport_options=(
            {"socket_connect_timeout": timeout, "socket_timeout": timeout}
            if broker_url.startswith(("redis://", "rediss://"))
            else {}
        ),
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
    )
    return app


def enqueue_train(job_id: int, *, broker_url: str, timeout: float, countdown: float | None = None) -> None:
    """Send ``mmkd.train(job_id)`` to the ``gpu`` queue; raises if the broker is unreachable."""
    producer_app(broker_url, timeout).send_task(TRAIN_TASK, args=[job_id], queue=Queue.GPU.value, countdown=countdown)


def publisher(settings: Settings) -> Publish:
    """The publisher for the configured broker."""
    return partial(enqueue_train, broker_url=settings.resolved_broker_url, timeout=settings.enqueue_timeout_seconds)


def check_broker(*, broker_url: str, timeout: float) -> None:
    """Open (and close) a broker connection; raises when the broker cannot be reached."""
    with producer_app(broker_url, timeout).connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)
