"""The loopback servers (moto, the API) wait for their own process to listen, never for a foreign one,
and leave no process behind when they fail to start."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import live_servers
import pytest
from live_servers import LoopbackServer, MotoServer, listens_on


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every process ``live_servers`` starts during the test."""
    processes: list[subprocess.Popen[bytes]] = []

    class Recorded(subprocess.Popen[bytes]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            processes.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(live_servers.subprocess, "Popen", Recorded)
        yield processes
    for process in processes:
        if process.poll() is None:  # only after a failed assertion: do not leak it either
            process.kill()
            process.wait()


def test_moto_on_a_free_port_listens_itself() -> None:
    server = MotoServer()
    server.start()
    try:
        assert server.process is not None and listens_on(server.process.pid, server.port)
    finally:
        server.stop()


def test_a_foreign_listener_on_the_port_fails_the_start(started: list[subprocess.Popen[bytes]]) -> None:
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        server = MotoServer(port=foreign.getsockname()[1])
        message = rf"^moto_server on 127\.0\.0\.1:{server.port} exited with \d+: another process listens there$"
        with pytest.raises(RuntimeError, match=message):
            server.start()
    assert server.process is None
    assert [process.returncode is not None for process in started] == [True]


def test_a_server_that_never_listens_is_killed_after_the_timeout(started: list[subprocess.Popen[bytes]]) -> None:
    server = LoopbackServer()
    with pytest.raises(RuntimeError, match=rf"^sleep on 127\.0\.0\.1:{server.port} did not listen within 0\.5 s$"):
        server.launch(["sleep", "60"], timeout=0.5)
    assert server.process is None
    assert [process.returncode is not None for process in started] == [True]
