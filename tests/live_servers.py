"""Server subprocesses on free loopback ports for the tests: moto's S3 server and the mmkd API.

A plain module (test files cannot import conftest): the session fixtures in ``tests/conftest.py``
build these, and tests that need a server of their own (``tests/contract``) build another.
"""

from __future__ import annotations

import contextlib
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


def listening_sockets(port: int) -> set[str]:
    """The inodes of the sockets listening on TCP ``port`` (any address, IPv4 or IPv6), from /proc/net."""
    inodes: set[str] = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        rows = table.read_text().splitlines()[1:] if table.exists() else []
        for fields in (row.split() for row in rows):
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def listens_on(pid: int, port: int) -> bool:
    """True when process ``pid`` itself holds a socket listening on ``port`` (not merely: something answers)."""
    inodes = listening_sockets(port)
    if not inodes:
        return False
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(descriptor)
                if target.startswith("socket:[") and target[len("socket:[") : -1] in inodes:
                    return True
    return False


class LoopbackServer:
    """A server subprocess on a loopback port (a free one unless given): launched, awaited, stopped."""

    def __init__(self, port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self, command: list[str], env: dict[str, str] | None = None, timeout: float = 30.0) -> None:
        """Start ``command`` (quietly) and wait until it listens on the port itself; killed if it does not.

        Something else answering on the port is not enough: ``free_port`` only says the port was free a
        moment ago, and a server that found it taken exits while the other one answers for it.
        """
        name = Path(command[0]).name
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        try:
            while not listens_on(self.process.pid, self.port):
                if self.process.poll() is not None:
                    raise RuntimeError(self._refusal(name, f"exited with {self.process.returncode}"))
                if time.monotonic() > deadline:
                    raise RuntimeError(self._refusal(name, f"did not listen within {timeout:g} s"))
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def _refusal(self, name: str, what: str) -> str:
        taken = ": another process listens there" if listening_sockets(self.port) else ""
        return f"{name} on 127.0.0.1:{self.port} {what}{taken}"

    def stop(self) -> None:
        """Terminate the server (killed if it lingers) and wait for it."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


class MotoServer(LoopbackServer):
    """moto's S3 server; stop() and start() again simulate a storage outage."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
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
