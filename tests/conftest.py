"""Fixtures for the real services the tests talk to: PostgreSQL, Redis and moto's S3 server.

Each test session gets its own freshly created PostgreSQL database and its own Redis database
number, so concurrent test runs on one machine never see each other's rows or queues.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("MMKD_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_BASE_URL = os.environ.get("MMKD_TEST_REDIS_URL", "redis://127.0.0.1:6379")


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


@pytest.fixture(scope="session")
def new_postgres_database() -> Iterator[Callable[[str], str]]:
    """Factory: ``new_postgres_database(prefix)`` creates an empty database and returns its URL.

    Every database it made is dropped when the test session ends.
    """
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    created: list[str] = []

    def create(prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return f"{base}/{name}"

    try:
        yield create
    finally:
        with admin.connect() as conn:
            for name in created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url(new_postgres_database: Callable[[str], str]) -> str:
    """A fresh, empty PostgreSQL database for this test session; dropped afterwards."""
    return new_postgres_database("mmkd_test")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number of its own (1..15), flushed before and after the session."""
    import redis

    number = 1 + (os.getpid() % 15)
    url = f"{REDIS_BASE_URL}/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


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


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A real S3 HTTP endpoint (moto server mode) for boto3; test credentials in the environment."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


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


@pytest.fixture(scope="session")
def api_server(postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A live API server (uvicorn, one worker) on a free loopback port for SDK and HTTP tests."""
    server = ApiServer(postgres_url, redis_url, tmp_path_factory.mktemp("api-home"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
