"""Dependency direction: core knows no HTTP, SQL or Celery; the service and the SDK never load torch.

Each check imports in a fresh interpreter and inspects ``sys.modules``; a static pass over core's
sources catches imports hidden inside functions.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB_SQL_QUEUE = ["fastapi", "starlette", "sqlalchemy", "alembic", "celery", "kombu", "psycopg", "redis", "uvicorn"]


def loaded_after(code: str) -> set[str]:
    """Top-level module names present in sys.modules after running ``code`` in a new interpreter."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_spec_models_are_torch_free() -> None:
    loaded = loaded_after("import core.spec, core.tracking, core.errors")
    assert not loaded & {"torch", "numpy", *WEB_SQL_QUEUE}


def test_the_trainer_pulls_in_no_web_sql_or_queue() -> None:
    loaded = loaded_after("import core.engine.trainer, core.engine.tracking_local, core.objectives, core.data")
    assert "torch" in loaded  # the probe works
    assert not loaded & set(WEB_SQL_QUEUE)


def test_the_service_app_never_loads_torch() -> None:
    loaded = loaded_after("from service.main import create_app\napp = create_app()")
    assert "fastapi" in loaded
    assert "torch" not in loaded


def test_the_sdk_and_the_cli_entry_point_load_no_torch() -> None:
    assert not loaded_after("import mmkd_client") & {"torch", "fastapi", "sqlalchemy", "celery"}
    assert "torch" not in loaded_after("import cli.main")


@pytest.mark.parametrize("path", sorted((ROOT / "core").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_sources_import_nothing_from_the_outer_layers(path: Path) -> None:
    forbidden = {*WEB_SQL_QUEUE, "service", "worker", "cli", "httpx"}
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
