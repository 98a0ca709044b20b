"""``mmkd keys``, ``mmkd db upgrade`` and ``mmkd jobs`` end to end; mistakes are one line, exit 1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from tests_support import add_metric_points
from typer.testing import CliRunner

from cli.main import app
from cli.worker import wait_until_up
from jobs import lifecycle
from service.config import get_settings
from service.jobs.results import RESULT_EXAMPLE

ROOT = Path(__file__).resolve().parents[2]
SPEC_FILE = ROOT / "examples" / "mfeat-paper.yaml"
runner = CliRunner()


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """MMKD_* pointing at a new SQLite file; settings cache cleared around the test."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("MMKD_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def _one_line_error(result: Any) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return str(lines[0])


def test_db_upgrade_and_key_lifecycle(sqlite_env: str) -> None:
    assert "run `mmkd db upgrade`" in _one_line_error(runner.invoke(app, ["keys", "list"]))
    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    created = runner.invoke(app, ["keys", "create", "--owner", "dana"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[0]
    assert token.startswith("mmkd_")
    listing = runner.invoke(app, ["keys", "list"])
    assert "dana" in listing.output and token not in listing.output
    prefix = "_".join(token.split("_")[:2])
    revoked = runner.invoke(app, ["keys", "revoke", prefix])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert "no API key" in _one_line_error(runner.invoke(app, ["keys", "revoke", "mmkd_nothing"]))


def test_jobs_commands_against_live_server(api_server: Any, tmp_path: Path) -> None:
    token = api_server.new_key()
    env = {"MMKD_URL": api_server.url, "MMKD_API_KEY": token}
    submitted = runner.invoke(app, ["jobs", "submit", str(SPEC_FILE)], env=env)
    assert submitted.exit_code == 0, submitted.output
    job_id = int(submitted.output.split()[2])
    got = runner.invoke(app, ["jobs", "get", str(job_id), "--json"], env=env)
    assert '"status": "queued"' in got.output
    listed = runner.invoke(app, ["jobs", "list", "--status", "queued"], env=env)
    assert "mfeat-paper" in listed.output
    cancelled = runner.invoke(app, ["jobs", "cancel", str(job_id)], env=env)
    assert cancelled.output.strip() == f"job {job_id}: cancelled"
    assert "already cancelled" in _one_line_error(runner.invoke(app, ["jobs", "cancel", str(job_id)], env=env))


def test_watch_shows_progress_then_result_table(api_server: Any) -> None:
    token = api_server.new_key()
    env = {"MMKD_URL": api_server.url, "MMKD_API_KEY": token}
    submitted = runner.invoke(app, ["jobs", "submit", str(SPEC_FILE)], env=env)
    job_id = int(submitted.output.split()[2])

    def train() -> None:
        engine = create_engine(api_server.database_url)
        with Session(engine) as session:
            progress = {"epoch": 1, "step": 5, "total_epochs": 2, "total_steps": 10}
            lifecycle.transition(session, job_id=job_id, to="running", values=progress)
            add_metric_points(session, job_id=job_id, step=5, epoch=1, values={"train/loss": 0.5})
            session.commit()
            time.sleep(0.5)
            lifecycle.transition(
                session, job_id=job_id, to="succeeded", values={"epoch": 2, "step": 10, "result": RESULT_EXAMPLE}
            )
            session.commit()
        engine.dispose()

    worker = threading.Thread(target=train)
    worker.start()
    watched = runner.invoke(app, ["jobs", "watch", str(job_id)], env=env)
    worker.join()
    assert watched.exit_code == 0, watched.output
    assert "student.accuracy" in watched.output and "0.9100" in watched.output
    assert f"job {job_id} succeeded" in watched.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["jobs", "submit", "no-such-file.yaml"], "no-such-file.yaml: no such file"),
        (["jobs", "get", "1", "--api-key", "mmkd_wrong"], "HTTP 401"),
        (["jobs", "get", "999999999"], "HTTP 404"),
        (["jobs", "list", "--url", "localhost:8000"], "must start with http:// or https://"),
    ],
)
def test_user_mistakes_are_one_line(api_server: Any, args: list[str], needle: str) -> None:
    env = {"MMKD_URL": api_server.url, "MMKD_API_KEY": api_server.new_key()}
    assert needle in _one_line_error(runner.invoke(app, args, env=env))


def test_invalid_spec_is_one_line_with_field_path(api_server: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC_FILE.read_text().replace("primary: [fou, zer, mor]", "primary: []"))
    env = {"MMKD_URL": api_server.url, "MMKD_API_KEY": api_server.new_key()}
    assert "dataset.primary" in _one_line_error(runner.invoke(app, ["jobs", "submit", str(bad)], env=env))


def test_unreachable_server_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmkd_client.client

    monkeypatch.setattr(mmkd_client.client.time, "sleep", lambda _: None)  # skip the retry backoff
    env = {"MMKD_URL": "http://127.0.0.1:9", "MMKD_API_KEY": "k"}
    assert "cannot reach" in _one_line_error(runner.invoke(app, ["jobs", "list"], env=env))


def test_serve_migrates_sqlite_and_answers(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    import httpx

    mmkd = str(Path(sys.executable).with_name("mmkd"))
    env = {**os.environ, "MMKD_HOME": str(tmp_path), "MMKD_BROKER_URL": f"sqla+sqlite:///{tmp_path}/b.db"}
    env.pop("MMKD_DATABASE_URL", None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [mmkd, "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}", [server])  # serve migrates first, then uvicorn binds
        token = subprocess.run(
            [mmkd, "keys", "create", "--owner", "eve"], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        whoami = httpx.get(f"http://127.0.0.1:{port}/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        assert whoami.json() == {"owner": "eve", "auth": True}
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("MMKD_DATABASE_URL", "nonsense", "Could not parse SQLAlchemy URL"),
        ("MMKD_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/none", "127.0.0.1:1/none"),
        ("MMKD_MAX_ATTEMPTS", "many", "MMKD_MAX_ATTEMPTS"),
    ],
)
def test_bad_settings_are_one_line(
    sqlite_env: str, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(variable, value)
    for command in (["db", "upgrade"], ["keys", "list"]):
        get_settings.cache_clear()
        assert needle in _one_line_error(runner.invoke(app, command))
