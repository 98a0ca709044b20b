"""docker-compose.yml and the Dockerfile stay consistent with the code (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings
from typer.main import get_command

from cli.main import app
from service.config import ApiSettings
from worker.config import WorkerSettings

ROOT = Path(__file__).parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
MMKD_SERVICES = ("migrate", "api", "worker")
#: Which process reads each service's settings: each knows only its own part and the common one.
SETTINGS_OF: dict[str, type[BaseSettings]] = {"migrate": ApiSettings, "api": ApiSettings, "worker": WorkerSettings}


def _names(settings: type[BaseSettings]) -> set[str]:
    return {f"MMKD_{name.upper()}" for name in settings.model_fields}


def _environment(service: str) -> dict[str, str]:
    env = COMPOSE["services"][service].get("environment", {})
    return dict(env) if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


@pytest.mark.parametrize("service", MMKD_SERVICES)
def test_every_mmkd_variable_is_a_setting(service: str) -> None:
    names = {name for name in _environment(service) if name.startswith("MMKD_")}
    assert names, f"{service} sets no MMKD_* variable"
    known = _names(SETTINGS_OF[service])
    assert names <= known, f"{service}: unknown settings {sorted(names - known)}"


def test_the_dockerfile_sets_only_known_settings() -> None:
    names = set(re.findall(r"\b(MMKD_[A-Z0-9_]+)=", (ROOT / "Dockerfile").read_text()))
    assert names <= _names(ApiSettings) & _names(WorkerSettings)


def test_the_worker_knows_none_of_the_api_settings() -> None:
    assert not {"auth", "host", "threads", "max_body_bytes"} & set(WorkerSettings.model_fields)


@pytest.mark.parametrize("service", MMKD_SERVICES)
def test_commands_exist_in_the_cli(service: str) -> None:
    command = COMPOSE["services"][service]["command"]
    assert command[0] == "mmkd"
    group: Any = get_command(app)
    for word in command[1:]:
        if word.startswith("-"):
            break
        assert word in group.commands, f"{service}: mmkd has no command {word!r}"
        group = group.commands[word]
    options = {opt for param in group.params for opt in getattr(param, "opts", [])}
    assert {word for word in command if word.startswith("--")} <= options


def test_services_and_images() -> None:
    services = COMPOSE["services"]
    assert {"postgres", "redis", "minio", "create-bucket", "migrate", "api", "worker"} <= set(services)
    assert services["api"]["build"]["target"] == services["migrate"]["build"]["target"] == "api"
    assert services["worker"]["build"]["target"] == "worker"
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    env = _environment("worker")
    assert env["MMKD_BROKER_URL"].startswith("redis://") and env["MMKD_STORAGE_URL"].startswith("s3://")
    bucket = env["MMKD_STORAGE_URL"].removeprefix("s3://").split("/")[0]
    assert f"local/{bucket}" in services["create-bucket"]["command"][0]
    # Jobs on several hosts: the API and the worker name the Ray head, whose nodes run the worker image.
    head = env["MMKD_RAY_ADDRESS"].split(":")[0]
    assert _environment("api")["MMKD_RAY_ADDRESS"] == env["MMKD_RAY_ADDRESS"] and head in services
    assert services[head]["image"] == services["ray-worker"]["image"] == services["worker"]["image"]
    assert f"--address={env['MMKD_RAY_ADDRESS']}" in services["ray-worker"]["command"]
    assert f"ray start --address={env['MMKD_RAY_ADDRESS']} --num-cpus=0" in services["worker"]["entrypoint"][2]


def test_api_image_has_no_torch_and_worker_pins_it() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    dockerfile = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    stages = dict(re.findall(r"^FROM \S+ AS (\w+)\n(.*?)(?=^FROM |\Z)", dockerfile, flags=re.M | re.S))
    assert "torch" not in stages["api"].replace('import torch"', "")
    assert "[service]" in stages["api"] and "train" not in stages["api"]
    assert "torch==2.13.0" in stages["worker"] and "[train,service,cluster]" in stages["worker"]


def test_the_grafana_dashboard_and_prometheus_use_metrics_that_exist() -> None:
    import json

    import service.telemetry
    import worker.telemetry

    defined = {"mmkd_jobs", "mmkd_queue_oldest_wait_seconds"}  # the API's scrape-time collector
    for module in (service.telemetry, worker.telemetry):
        for value in vars(module).values():
            name = getattr(value, "_name", None)
            if isinstance(name, str) and name.startswith("mmkd_"):
                defined.add(name)
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "mmkd.json").read_text())
    used = {
        re.sub(r"_(bucket|count|sum|total)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bmmkd_[a-z_]+", target["expr"])
    }
    assert used and used <= {re.sub(r"_total$", "", name) for name in defined}, used - defined
    scraped = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"]
    port = _environment("worker")["MMKD_WORKER_METRICS_PORT"]
    assert {t for job in scraped for t in job["static_configs"][0]["targets"]} == {"api:8000", f"worker:{port}"}
