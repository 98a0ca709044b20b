"""The Celery app's registered tasks and delivery settings (no broker needed)."""

from __future__ import annotations

import pytest

from worker.celery_app import app
from worker.config import WorkerSettings, celery_config


def test_registered_task_names_snapshot() -> None:
    app.loader.import_default_modules()
    names = sorted(name for name in app.tasks if not name.startswith("celery."))
    assert names == ["mmkd.train"]


def test_delivery_settings(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("MMKD_HOME", str(tmp_path))
    config = celery_config(WorkerSettings())
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["task_routes"] == {"mmkd.train": {"queue": "gpu"}}
    assert config["broker_url"] == f"sqla+sqlite:///{tmp_path.resolve() / 'broker.db'}"
    assert "broker_transport_options" not in config  # the SQLAlchemy transport passes them to create_engine


def test_redis_gets_a_visibility_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMKD_BROKER_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("MMKD_VISIBILITY_TIMEOUT_SECONDS", "900")
    config = celery_config(WorkerSettings())
    assert config["broker_transport_options"] == {"visibility_timeout": 900}
