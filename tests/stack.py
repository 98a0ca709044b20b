"""The production-shaped stack for end-to-end and browser tests: PostgreSQL, Redis, moto's S3 server,
the API under uvicorn and real ``celery worker`` subprocesses, all configured through ``MMKD_*``
environment variables as in production. Leases, heartbeats and the reaper run on short clocks so
crash recovery takes seconds. The fixtures that build it live in the conftest files that use it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker
from tests_support import wait_until

from cli.worker import celery_worker_command, wait_until_up

MMKD = str(Path(sys.executable).with_name("mmkd"))
FAST_CLOCKS = {
    "MMKD_LEASE_SECONDS": "6",
    "MMKD_HEARTBEAT_SECONDS": "1",
    "MMKD_REAPER_INTERVAL_SECONDS": "1",
    "MMKD_REQUEUE_AFTER_SECONDS": "30",
    "MMKD_RETRY_DELAY_SECONDS": "1",
    "MMKD_METRICS_FLUSH_SECONDS": "0.5",
    "MMKD_CANCEL_POLL_SECONDS": "0.5",
    "MMKD_STORAGE_MAX_ATTEMPTS": "2",
    "MMKD_STORAGE_TIMEOUT_SECONDS": "2",
    "MMKD_MAX_ATTEMPTS": "3",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child in its own process group, logging to a file; killed as a group."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._handle = log.open("ab")
        self.popen = subprocess.Popen(
            command, env=env, stdout=self._handle, stderr=subprocess.STDOUT, start_new_session=True
        )

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the whole group (Celery's pool children included)."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL the group if it lingers."""
        self.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self._handle.close()


class Stack:
    """Everything a test needs to drive jobs end to end."""

    def __init__(self, home: Path, database_url: str, broker_url: str, moto: Any, bucket: str, **env: str) -> None:
        self.home, self.database_url, self.moto, self.bucket = home, database_url, moto, bucket
        self.env = {
            **os.environ,
            **FAST_CLOCKS,
            "MMKD_HOME": str(home),
            "MMKD_DATABASE_URL": database_url,
            "MMKD_BROKER_URL": broker_url,
            "MMKD_STORAGE_URL": f"s3://{bucket}/mmkd",
            "MMKD_S3_ENDPOINT_URL": moto.endpoint_url,
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.engine = create_engine(database_url)
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.processes: list[Process] = []
        self.api_url = ""
        self.api_key = ""

    def start_api(self) -> None:
        """uvicorn on a free port, after migrating the database."""
        from jobs.keys import create_key
        from jobs.migrate import upgrade

        upgrade(self.database_url)
        with Session(self.engine) as session:
            self.api_key = create_key(session, owner_name="integration")[1]
        port = _free_port()
        command = [sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory"]
        self.spawn([*command, "--host", "127.0.0.1", "--port", str(port)], "api")
        self.api_url = f"http://127.0.0.1:{port}"
        wait_until_up(self.api_url)

    def spawn(self, command: list[str], name: str, **env: str) -> Process:
        """Start a child process with the stack's environment."""
        process = Process(command, {**self.env, **env}, self.home / f"{name}.log")
        self.processes.append(process)
        return process

    def start_worker(self, name: str, *, beat: bool = False) -> Process:
        """A real Celery worker on the ``gpu`` queue (through ``mmkd worker``)."""
        command = [MMKD, "worker", "--queues", "gpu", "--concurrency", "1"]
        return self.spawn([*command, *(["--beat"] if beat else [])], name)

    def start_stuck_worker(self, name: str, *, stuck_at_step: int, pid_file: Path, **env: str) -> Process:
        """A real Celery worker on the ``gpu`` queue whose training hangs at ``stuck_at_step``."""
        celery_arguments = celery_worker_command("gpu", 1)[3:]  # after "python -m celery"
        command = [sys.executable, str(Path(__file__).parent / "integration" / "stuck_worker.py"), *celery_arguments]
        return self.spawn(command, name, STUCK_AT_STEP=str(stuck_at_step), STUCK_PID_FILE=str(pid_file), **env)

    def new_key(self, owner: str | None = None) -> str:
        """An API key for a fresh owner (or ``owner``)."""
        from jobs.keys import create_key

        with Session(self.engine) as session:
            return create_key(session, owner_name=owner or f"owner-{uuid.uuid4().hex[:8]}")[1]

    def client(self) -> Any:
        """An SDK client for the integration owner."""
        from mmkd_client import Client

        return Client(self.api_url, self.api_key)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 90.0, what: str = "condition") -> Any:
        """Poll ``predicate`` until it returns something truthy; on a timeout, show the processes' logs."""
        try:
            return wait_until(predicate, timeout, interval=0.1, what=what)
        except TimeoutError as error:
            logs = "\n".join(f"--- {p.log.name}\n{p.log.read_text()[-3000:]}" for p in self.processes)
            raise TimeoutError(f"{error}\n{logs}") from None

    def ensure_bucket(self) -> None:
        """Create the bucket (again, after a moto restart lost it)."""
        client = boto3.client("s3", endpoint_url=self.moto.endpoint_url)
        if self.bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=self.bucket)

    def close(self) -> None:
        """Stop every child and release the database."""
        for process in reversed(self.processes):
            process.stop()
        self.engine.dispose()
