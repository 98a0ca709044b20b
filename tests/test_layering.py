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
    forbidden = {*WEB_SQL_QUEUE, "service", "worker", "cli", "httpx", "ray"}
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


def _imported_roots(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path``, including imports inside functions."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


#: What each layer may import from the project's own packages. The HTTP layer and the worker both
#: stand on the domain (jobs) and storage; neither reaches into the other; settings sit at the bottom.
OWN = {"settings", "core", "storage", "jobs", "studies", "service", "worker", "cli", "migrations", "sdk", "mmkd_client"}
ALLOWED_OWN: dict[str, set[str]] = {
    "settings": set(),
    "storage": {"settings", "core", "storage"},  # from core: core.errors.StorageError only
    "core": {"core", "storage"},  # the data loader reads through storage
    "jobs": {"settings", "core", "storage", "jobs", "migrations"},
    "studies": {"settings", "core", "storage", "jobs", "migrations", "studies"},  # searches submit jobs
    "service": {"settings", "core", "storage", "jobs", "studies", "service"},
    "worker": {"settings", "core", "storage", "jobs", "studies", "worker"},
}


@pytest.mark.parametrize("layer", sorted(ALLOWED_OWN))
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    paths = [ROOT / "settings.py"] if layer == "settings" else _sources(layer)
    for path in paths:
        own = _imported_roots(path) & OWN
        assert own <= ALLOWED_OWN[layer], f"{path.relative_to(ROOT)} imports {sorted(own - ALLOWED_OWN[layer])}"


def test_the_domain_and_storage_know_no_http_and_no_torch() -> None:
    for path in [*_sources("jobs", "storage", "studies"), ROOT / "settings.py"]:
        web = _imported_roots(path) & {"fastapi", "starlette", "uvicorn", "httpx", "torch"}
        assert not web, f"{path.relative_to(ROOT)} imports {sorted(web)}"


def test_only_the_studies_talk_to_optuna() -> None:
    """Optuna is the studies' engine: the trainer, the job domain and the HTTP layer never touch it."""
    talkers = [
        path.relative_to(ROOT).as_posix()
        for path in _sources("core", "jobs", "storage", "service", "worker", "cli", "migrations", "studies")
        if "optuna" in _imported_roots(path)
    ]
    assert talkers == [
        "migrations/study_storage.py",
        "studies/local.py",
        "studies/pruning.py",
        "studies/search.py",
        "studies/service.py",
    ]


def test_only_the_worker_s_rank_launcher_talks_to_ray() -> None:
    """Ray Train is a launcher of the worker's: core receives a process group and never sees Ray."""
    talkers = [
        path.relative_to(ROOT).as_posix()
        for path in _sources("core", "jobs", "storage", "service", "worker", "cli", "migrations", "studies")
        if "ray" in _imported_roots(path)
    ]
    assert talkers == ["worker/ranks.py"]
    assert "ray" not in loaded_after("import worker.runner, worker.ranks")  # imported on first use only


def test_the_studies_load_no_torch() -> None:
    loaded = loaded_after("import studies.service, studies.pruning, service.studies.router")
    assert "optuna" not in loaded  # imported on first use only
    assert "torch" not in loaded


def test_only_the_storage_module_talks_to_s3() -> None:
    for path in _sources("core", "jobs", "service", "worker", "cli"):
        assert not _imported_roots(path) & {"boto3", "botocore"}, f"{path.relative_to(ROOT)} reaches S3 itself"


def test_only_the_publisher_sends_tasks() -> None:
    senders = [path for path in _sources("jobs", "service", "worker", "cli") if ".send_task(" in path.read_text()]
    assert [path.relative_to(ROOT).as_posix() for path in senders] == ["jobs/publish.py"]
