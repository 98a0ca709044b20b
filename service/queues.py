"""Names the API and the worker agree on. Torch-free and Celery-free: both sides import it."""

from __future__ import annotations

import enum


class Queue(enum.StrEnum):
    """Broker queues; one per GPU class as the fleet grows."""

    GPU = "gpu"


#: The one task the API sends: it takes only a job id.
TRAIN_TASK = "mmkd.train"
