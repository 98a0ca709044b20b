"""The worker glues core to the database and storage: no web framework, and torch only once a job runs."""

from __future__ import annotations

import subprocess
import sys


def test_worker_modules_import_neither_fastapi_nor_torch() -> None:
    code = (
        "import sys, worker.tasks, worker.runner, jobs.reaper, storage.store, storage.s3, cli.worker; "
        "print(sorted(m for m in ('fastapi', 'starlette', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
