"""Issue 12's table, the spec rows: each broken spec through the real ``mmkd train`` and
``mmkd jobs submit`` processes is exit code 1 and one ``error:`` line naming the file and the
problem; ``train`` leaves nothing in --out's folder and ``jobs submit`` sends no request."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

MMKD = str(Path(sys.executable).with_name("mmkd"))
GOOD = """\
name: table
dataset: {name: basic_motions, primary: [accelerometer], auxiliary: [gyroscope]}
method: {name: paper}
train:
  epochs: 1
  batch_size: 16
"""


class Listener:
    """A TCP port that counts the connections made to it and answers each with a 401 (a stand-in server)."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


@pytest.fixture
def server() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


def one_error_line(result: subprocess.CompletedProcess[str], spec: Path) -> str:
    """The single ``error: <spec>: ...`` line of a failed command; no traceback, nothing else printed."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {spec}: ") and lines[0].count(str(spec)) == 1, lines[0]
    return lines[0].removeprefix(f"error: {spec}: ")


def refused_by_train_and_submit(tmp_path: Path, server: Listener, content: str) -> tuple[str, str]:
    """Run both commands on ``content``; return what each said after the file's name."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(content)
    out = tmp_path / "run"
    trained = subprocess.run([MMKD, "train", str(spec), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["spec.yaml"]  # no run folder, no partial one
    env = {"MMKD_URL": server.url, "MMKD_API_KEY": "mmkd_test"}
    submitted = subprocess.run(
        [MMKD, "jobs", "submit", str(spec)], capture_output=True, text=True, timeout=120, env={"PATH": "", **env}
    )
    assert server.connections == 0
    return one_error_line(trained, spec), one_error_line(submitted, spec)


def test_yaml_syntax_error(tmp_path: Path, server: Listener) -> None:
    broken = GOOD.replace("method: {name: paper}", "method: {name: paper")
    for said in refused_by_train_and_submit(tmp_path, server, broken):
        assert said.startswith("YAML syntax error at line 4, column ")


def test_python_tag(tmp_path: Path, server: Listener) -> None:
    marker = tmp_path.parent / f"{tmp_path.name}-ran"
    tagged = GOOD.replace("epochs: 1", f"epochs: !!python/object/apply:os.system ['touch {marker}']")
    for said in refused_by_train_and_submit(tmp_path, server, tagged):
        assert said.startswith("tag !!python/object/apply:os.system at line 5, column 11 is not allowed: ")
    assert not marker.exists()


def test_bool_for_an_int(tmp_path: Path, server: Listener) -> None:
    for said in refused_by_train_and_submit(tmp_path, server, GOOD.replace("epochs: 1", "epochs: true")):
        assert said == "invalid spec: train.epochs: Input should be a valid integer"


def test_duplicate_keys(tmp_path: Path, server: Listener) -> None:
    twice = GOOD + "  epochs: 3\n"
    for said in refused_by_train_and_submit(tmp_path, server, twice):
        assert said == "duplicate key 'epochs' at line 7, column 3 (first at line 5)"


def test_empty_spec_file(tmp_path: Path, server: Listener) -> None:
    for said in refused_by_train_and_submit(tmp_path, server, ""):
        assert said == "is empty"


def test_the_same_spec_when_valid_reaches_the_server(tmp_path: Path, server: Listener) -> None:
    """The listener does count: a valid spec makes ``jobs submit`` send its request (and get the 401)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(GOOD)
    env = {"PATH": "", "MMKD_URL": server.url, "MMKD_API_KEY": "mmkd_test"}
    result = subprocess.run([MMKD, "jobs", "submit", str(spec)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1 and "HTTP 401" in result.stderr and "Traceback" not in result.stderr
    assert server.connections == 1
