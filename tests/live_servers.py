"""Server subprocesses on free loopback ports for the tests: moto's S3 server and the mmkd API.

A plain module (test files cannot import conftest): the session fixtures in ``tests/conftest.py``
build these, and tests that need a server of their own (``tests/contract``) build another.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class LoopbackServer:
    """A server subprocess on a free loopback port: launched, awaited, stopped."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self, command: list[str], env: dict[str, str] | None = None) -> None:
        """Start ``command`` (quietly) and wait until the port accepts connections."""
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class MotoServer(LoopbackServer):
    """moto's S3 server; stop() and start() again simulate a storage outage."""

    def __init__(self) -> None:
        super().__init__()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.launch([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(self.port)])


class ApiServer(LoopbackServer):
    """The mmkd API under uvicorn in a subprocess, on PostgreSQL and Redis, with a local store."""

    def __init__(self, database_url: str, broker_url: str, home: Path) -> None:
        super().__init__()
        self.database_url = database_url
        self.url = f"http://127.0.0.1:{self.port}"
        self.storage_root = home / "artifacts"
        self.env = {
            **os.environ,
            "MMKD_HOME": str(home),
            "MMKD_DATABASE_URL": database_url,
            "MMKD_BROKER_URL": broker_url,
            "MMKD_STORAGE_URL": self.storage_root.as_uri(),
        }

    def start(self) -> None:
        """Migrate the database, start uvicorn and wait for the port."""
        from jobs.migrate import upgrade

        upgrade(self.database_url)
        uvicorn = Path(sys.executable).with_name("uvicorn")
        command = [str(uvicorn), "service.main:create_app", "--factory", "--host", "127.0.0.1"]
        self.launch([*command, "--port", str(self.port)], env=self.env)

    def new_key(self, owner: str | None = None) -> str:
        """Issue an API key (for a fresh owner by default) straight in the database."""
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session

        from jobs.keys import create_key

        engine = create_engine(self.database_url)
        with Session(engine) as session:
            _, token = create_key(session, owner_name=owner or f"owner-{uuid.uuid4().hex[:8]}")
        engine.dispose()
        return token
