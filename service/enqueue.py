"""Publishing the train task through a producer-only Celery app: names only, no worker code."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from service.queues import TRAIN_TASK, Queue


@lru_cache(maxsize=4)
def producer_app(broker_url: str, timeout: float) -> Celery:
    """A Celery app that only sends (one per broker URL); publishing gives up after ``timeout``."""
    app = Celery("mmkd-api", broker=broker_url, set_as_current=False)
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


def enqueue_train(job_id: int, *, broker_url: str, timeout: float) -> None:
    """Send ``mmkd.train(job_id)`` to the ``gpu`` queue; raises if the broker is unreachable."""
    producer_app(broker_url, timeout).send_task(TRAIN_TASK, args=[job_id], queue=Queue.GPU.value)


def check_broker(*, broker_url: str, timeout: float) -> None:
    """Open (and close) a broker connection; raises when the broker cannot be reached."""
    with producer_app(broker_url, timeout).connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)
