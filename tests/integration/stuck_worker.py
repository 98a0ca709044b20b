"""A real Celery worker whose training hangs for good at one step, for the liveness tests.

Run as ``python stuck_worker.py <celery arguments>``; ``STUCK_AT_STEP`` names the step that hangs and
``STUCK_PID_FILE`` where the hung process writes its pid. The trainer is patched in the worker's
main process before the prefork pool starts, so every pool child inherits the patch.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> None:
    """Patch the train step, then hand over to Celery's command line."""
    from celery.bin.celery import main as celery_main

    from core.engine import trainer

    real_step = trainer.train_step
    stuck_at = int(os.environ["STUCK_AT_STEP"])

    def stuck_step(run, batch, epoch):  # type: ignore[no-untyped-def]
        if run.state.step == stuck_at:
            Path(os.environ["STUCK_PID_FILE"]).write_text(str(os.getpid()))
            time.sleep(3600)  # a hang no exception reaches
        return real_step(run, batch, epoch)

    trainer.train_step = stuck_step
    sys.argv = ["celery", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
