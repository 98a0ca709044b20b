"""``mmkd up``: the embedded stack in a subprocess (SQLite, kombu's SQLAlchemy transport, a local
folder) runs one short job to success, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from integration_helpers import TINY

from cli.worker import wait_until_up

pytestmark = pytest.mark.slow


def _processes_using(home: Path) -> list[int]:
    """Pids whose environment names ``home`` (our children inherit MMKD_HOME)."""
    marker = f"MMKD_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_mmkd_up_runs_a_job_and_stops_cleanly(tmp_path: Path) -> None:
    from mmkd_client import Client

    home = (tmp_path / "home").resolve()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMKD_")}
    env.update(MMKD_HOME=str(home), PYTHONUNBUFFERED="1")
    log = tmp_path / "up.log"
    mmkd = str(Path(sys.executable).with_name("mmkd"))
    with log.open("wb") as out:
        up = subprocess.Popen([mmkd, "up", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", timeout=90)
        with Client(f"http://127.0.0.1:{port}") as client:  # auth is off on loopback: no key
            job = client.wait(client.submit(TINY).id, timeout=180)
            student = client.download(job.id, f"jobs/{job.id}/student/model.json", tmp_path)
        assert job.result["student"]["accuracy"] >= 0 and student.stat().st_size > 0
        assert (home / "artifacts" / f"jobs/{job.id}/student/student.pt2").is_file()
        assert "authentication OFF" in log.read_text()
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]
    assert _processes_using(home) == []
