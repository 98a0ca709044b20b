"""Process supervision of ``mmkd worker --beat`` and ``mmkd up`` (no Celery needed)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tests_support import process_alive, wait_until

from cli.worker import celery_worker_command, embedded_environment, spawn, stop_children, supervise


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(child) for child in found.stdout.split()]


def test_stop_children_kills_whole_groups() -> None:
    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    child = spawn([sys.executable, "-c", script])
    grandchildren = wait_until(lambda: _children(child.pid), what="the grandchild started")
    stop_children([child], grace=2)
    assert child.returncode is not None
    wait_until(lambda: not any(process_alive(pid) for pid in grandchildren), what="the grandchildren gone")


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = (
        "import sys, time; from cli.worker import spawn; "
        f"child = spawn(['sleep', '60']); open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)"
    )
    supervisor = subprocess.Popen([sys.executable, "-c", script])
    sleeper = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), 20, what="the child's pid"))
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait()
    wait_until(lambda: not process_alive(sleeper), 5, what="the orphan gone")


def test_supervise_stops_everything_when_one_child_dies() -> None:
    children = [spawn(["sleep", "60"]), spawn([sys.executable, "-c", "raise SystemExit(3)"])]
    assert supervise(children, threading.Event()) == 1
    assert all(child.returncode is not None for child in children)


def test_embedded_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MMKD_LEASE_SECONDS", "30")
    env = embedded_environment(tmp_path, "127.0.0.1")
    assert env["MMKD_AUTH"] == "false" and env["MMKD_HOME"] == str(tmp_path.resolve())
    assert env["MMKD_LEASE_SECONDS"] == "30"
    assert "MMKD_AUTH" not in embedded_environment(tmp_path, "0.0.0.0")


def test_celery_command() -> None:
    command = celery_worker_command("gpu,gpu-a100", 2)
    assert command[1:6] == ["-m", "celery", "--app", "worker.celery_app:app", "worker"]
    assert command[command.index("--queues") + 1] == "gpu,gpu-a100"
    assert command[command.index("--concurrency") + 1] == "2"
