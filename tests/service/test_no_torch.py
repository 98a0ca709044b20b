"""The API process never imports torch (checked in a clean interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK = """
import sys
from service.main import create_app
app = create_app()
app.openapi()
import cli.jobs, cli.admin, mmkd_client
heavy = sorted(name for name in sys.modules if name.split(".")[0] in {"torch", "numpy", "sklearn"})
assert "torch" not in sys.modules, heavy
print("ok", heavy)
"""


def test_service_and_client_import_without_torch(tmp_path: Path) -> None:
    env = {"MMKD_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
