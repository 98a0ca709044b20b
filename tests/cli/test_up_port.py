"""``mmkd up`` and its port (issue 12): a busy port is one error line before anything starts, and
"mmkd is up" is printed only when the API that answers is the child serving the socket we bound."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer

from cli.worker import api_url, bind_api_socket, wait_until_up

MMKD = str(Path(sys.executable).with_name("mmkd"))


def up_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MMKD_")}
    return {**env, "MMKD_HOME": str(home), "PYTHONUNBUFFERED": "1"}


@pytest.fixture()
def listening() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_a_busy_port_is_one_error_line_before_anything_starts(tmp_path: Path, listening: int) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [MMKD, "up", "--port", str(listening)],
        env=up_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: port {listening} on 127.0.0.1 is in use (another mmkd up or server?); choose another with --port"
    )
    assert "mmkd is up" not in result.stdout
    assert not (tmp_path / "home").exists()  # no database migrated, no child started
    assert time.monotonic() - started < 30


def test_a_running_stack_holds_its_port_and_answers_from_its_own_child(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen([MMKD, "up", "--port", str(port)], env=up_env(tmp_path / "home"), stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 90
        while "mmkd is up" not in log.read_text() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "mmkd is up" in log.read_text(), log.read_text()[-3000:]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        second = subprocess.run(
            [MMKD, "up", "--port", str(port)],
            env=up_env(tmp_path / "other"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1 and f"error: port {port} on 127.0.0.1 is in use" in second.stderr
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def test_an_answer_while_a_child_has_exited_is_not_up() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    try:
        with pytest.raises(RuntimeError, match="exited during start-up"):
            wait_until_up(f"http://127.0.0.1:{server.server_address[1]}", [child], timeout=5)
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_bound_by_mmkd_up_cannot_be_bound_again() -> None:
    """The socket listens as soon as it is bound: a second SO_REUSEADDR bind of the port is refused."""
    with bind_api_socket("127.0.0.1", 0) as first:
        port = first.getsockname()[1]
        with pytest.raises(typer.Exit):
            bind_api_socket("127.0.0.1", port).close()


def test_an_ipv6_host_is_bracketed_in_the_url() -> None:
    assert api_url("::1", 8000) == "http://[::1]:8000"
    assert api_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert api_url("localhost", 80) == "http://localhost:80"
