"""A real ``celery worker`` (prefork, one job per child) decides in its main process whether a message
starts a child: a cancelled job's message is acknowledged without one, and a job whose owner is at
the running limit stays queued, is published again for later, and starts no child either.

The observable is the pool's child processes: with ``worker_max_tasks_per_child=1`` every message
handed to the pool retires its child and forks a new one, so the children's pids change.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis_claims import DatabaseClaims
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from jobs.migrate import upgrade
from jobs.models import Job, Owner
from jobs.orm import utcnow
from jobs.publish import Queue, enqueue_train

MMKD = str(Path(sys.executable).with_name("mmkd"))
SPEC = {
    "name": "tiny",
    "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["kar"]},
    "method": {"name": "student_only"},
}


def _children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (the prefork pool's children of the worker's main process)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(") ", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _wait(predicate: Callable[[], object], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout}s\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


class Worker:
    """A database, a Redis database and a real worker process on them."""

    def __init__(self, database_url: str, broker_url: str, home: Path) -> None:
        self.database_url, self.broker_url, self.log = database_url, broker_url, home / "worker.log"
        self.engine = create_engine(database_url)
        env = {
            **os.environ,
            "MMKD_HOME": str(home),
            "MMKD_DATABASE_URL": database_url,
            "MMKD_BROKER_URL": broker_url,
            "MMKD_MAX_TASKS_PER_CHILD": "1",
            "MMKD_MAX_RUNNING_PER_OWNER": "1",
            "MMKD_RUNNING_LIMIT_DELAY_SECONDS": "600",  # the held job's next offer stays out of the test
        }
        with self.log.open("wb") as out:
            command = [MMKD, "worker", "--queues", Queue.GPU.value, "--concurrency", "1"]
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        _wait(lambda: b"ready." in self.log.read_bytes() and _children(self.process.pid), 60, "worker up", self.log)
        self.owner_id = self._owner()

    def _owner(self) -> int:
        with Session(self.engine) as session:
            owner = Owner(name=f"dispatch-{uuid.uuid4().hex[:8]}")
            session.add(owner)
            session.commit()
            return owner.id

    def add_job(self, **fields: object) -> int:
        """A job of the test's owner (queued unless told otherwise)."""
        now = utcnow()
        values = {"status": "queued", "attempts": 0, "max_attempts": 3, "queued_at": now, "created_at": now, **fields}
        with Session(self.engine) as session:
            job = Job(owner_id=self.owner_id, name="tiny", spec=SPEC, spec_hash="0" * 64, seed=0, **values)
            session.add(job)
            session.commit()
            return job.id

    def job(self, job_id: int) -> Job:
        """The job as stored now."""
        with Session(self.engine, expire_on_commit=False) as session:
            return session.scalars(select(Job).where(Job.id == job_id)).one()

    def publish(self, job_id: int) -> None:
        """Send ``mmkd.train(job_id)`` as the API does."""
        enqueue_train(job_id, broker_url=self.broker_url, timeout=2)

    def drained(self) -> bool:
        """Nothing waits in the queue and nothing delivered is still unacknowledged."""
        client = redis.Redis.from_url(self.broker_url)
        return client.llen(Queue.GPU.value) == 0 and client.hlen("unacked") == 0

    def stop(self) -> None:
        """Stop the worker (warm shutdown, then kill) and release the database."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.engine.dispose()


@pytest.fixture
def worker(
    new_postgres_database: Callable[[str], str], redis_databases: DatabaseClaims, tmp_path: Path
) -> Iterator[Worker]:
    """A worker on a database of its own and a Redis database number nobody else uses (claimed)."""
    database_url = new_postgres_database("mmkd_dispatch")
    upgrade(database_url)
    with redis_databases.database() as broker_url:
        started = Worker(database_url, broker_url, tmp_path)
        try:
            yield started
        finally:
            started.stop()


def test_cancelled_jobs_messages_start_no_child(worker: Worker) -> None:
    children = _children(worker.process.pid)
    cancelled = [worker.add_job(status="cancelled", finished_at=utcnow()) for _ in range(3)]
    for job_id in cancelled:
        worker.publish(job_id)
    _wait(lambda: worker.log.read_text().count("skipped") >= 3 and worker.drained(), 60, "3 skips", worker.log)
    time.sleep(1.0)  # a child retired by a message would be replaced within this
    assert _children(worker.process.pid) == children, worker.log.read_text()[-3000:]
    assert all(worker.job(job_id).status == "cancelled" for job_id in cancelled)


def test_a_job_over_its_owners_running_limit_stays_queued_and_comes_back_later(worker: Worker) -> None:
    lease = {"lease_owner": "elsewhere", "lease_expires_at": utcnow() + dt.timedelta(hours=1)}
    worker.add_job(status="running", attempts=1, started_at=utcnow(), **lease)
    waiting = worker.add_job()
    before = worker.job(waiting).queued_at
    children = _children(worker.process.pid)
    worker.publish(waiting)
    _wait(lambda: "held back" in worker.log.read_text(), 60, "the hold", worker.log)
    time.sleep(1.0)
    job = worker.job(waiting)
    assert (job.status, job.attempts) == ("queued", 0)
    assert job.status_reason is not None and "MMKD_MAX_RUNNING_PER_OWNER" in job.status_reason
    assert before is not None and job.queued_at is not None and job.queued_at > before
    assert _children(worker.process.pid) == children, worker.log.read_text()[-3000:]
    # published again with a delay: the worker holds it until then (unacknowledged, with an ETA)
    client = redis.Redis.from_url(worker.broker_url)
    held = [json.loads(raw) for raw in client.hvals("unacked")]
    bodies = [json.loads(base64.b64decode(message[0]["body"]))[0] for message in held]
    etas = [message[0]["headers"]["eta"] for message in held]
    assert bodies == [[waiting]] and etas[0] is not None
