"""The live stream (``/v1/jobs/{id}/stream``) and the logs API (``/v1/jobs/{id}/logs``) on a real
uvicorn server on PostgreSQL, with the worker's writes played straight into the database."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live_servers import ApiServer
from mmkd_client import Client, StreamEvent
from mmkd_client.stream import parse_events
from sqlalchemy import create_engine, delete
from sqlalchemy.orm import Session, sessionmaker
from tests_support import add_metric_points, wait_until
from typer.testing import CliRunner

from cli.main import app
from jobs import lifecycle
from jobs.log_lines import LogLine, append_lines
from jobs.models import Job
from jobs.orm import utcnow

SPEC = {
    "name": "s",
    "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["kar"]},
    "method": {"name": "student_only"},
}
LIMIT = 3


@pytest.fixture(scope="module")
def server(postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A server with a small stream limit, fast polls, and one handler thread (admission: 2 slots)."""
    api = ApiServer(postgres_url, redis_url, tmp_path_factory.mktemp("stream-home"))
    api.env.update(MMKD_MAX_STREAMS_PER_OWNER=str(LIMIT), MMKD_STREAM_POLL_SECONDS="0.1", MMKD_THREADS="1")
    api.start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def db(server: ApiServer) -> Iterator[sessionmaker[Session]]:
    engine = create_engine(server.database_url)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


@pytest.fixture
def key(server: ApiServer) -> str:
    return server.new_key()


def _running_job(server: ApiServer, key: str, db: sessionmaker[Session]) -> int:
    with Client(server.url, key) as client:
        job_id = client.submit(SPEC).id
    with db() as session:
        lifecycle.transition(session, job_id=job_id, to="running", reason="test: claimed")
        session.commit()
    return job_id


def _write(db: sessionmaker[Session], job_id: int, step: int, *, lines: int = 1, status: str | None = None) -> None:
    """Play the worker: a point at ``step``, log lines, and optionally a status change."""
    with db() as session:
        add_metric_points(session, job_id=job_id, step=step, epoch=step, values={"train/total": 1.0 / step})
        rows = [LogLine(utcnow(), "INFO", "core.engine.trainer", f"step {step} line {i}") for i in range(lines)]
        append_lines(session, job_id=job_id, attempt=1, lines=rows)
        if status is not None:
            lifecycle.transition(session, job_id=job_id, to=status, reason=f"test: {status}")
        session.commit()


class Reader:
    """A stream read in a thread, every event kept."""

    def __init__(self, url: str, key: str, *, last_event_id: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {key}", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
        self.events: list[StreamEvent] = []
        self.status: int | None = None
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(10, read=30))
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        wait_until(lambda: self.status is not None, 10, what="the stream's answer")

    def _read(self, url: str) -> None:
        with contextlib.suppress(httpx.HTTPError), self._http.stream("GET", url) as response:
            self._socket = response.extensions["network_stream"].get_extra_info("socket")
            self.status = response.status_code
            for event in parse_events(response.iter_lines()):
                self.events.append(event)

    def kinds(self) -> list[str]:
        return [event.kind for event in self.events]

    def drop(self) -> None:
        """Vanish as a closed browser tab does: the connection goes, with no goodbye."""
        self._socket.shutdown(socket.SHUT_RDWR)

    def join(self) -> None:
        self._thread.join(15)
        assert not self._thread.is_alive()


def _points(events: list[StreamEvent]) -> list[int]:
    return [point.step for event in events for point in event.points]


def _lines(events: list[StreamEvent]) -> list[str]:
    return [line.message for event in events for line in event.lines]


def test_the_stream_sends_the_job_its_news_and_the_end(server: ApiServer, key: str, db: sessionmaker[Session]) -> None:
    job_id = _running_job(server, key, db)
    _write(db, job_id, 1)  # written before the reader came: its catch-up
    reader = Reader(f"{server.url}/v1/jobs/{job_id}/stream", key)
    wait_until(lambda: _points(reader.events) == [1], 10, what="the catch-up")
    assert reader.events[0].kind == "job" and reader.events[0].job.status == "running"
    for step in (2, 3):
        _write(db, job_id, step, lines=2)
    wait_until(lambda: _points(reader.events) == [1, 2, 3], 10, what="the live points")
    _write(db, job_id, 4, status="succeeded")
    reader.join()
    assert reader.kinds()[-1] == "end" and reader.events[-1].data == {"status": "succeeded"}
    assert _points(reader.events) == [1, 2, 3, 4]
    expected = ["step 1 line 0", "step 2 line 0", "step 2 line 1", "step 3 line 0", "step 3 line 1", "step 4 line 0"]
    assert _lines(reader.events) == expected
    assert "succeeded" in [e.event.kind for e in reader.events if e.event is not None]
    assert [e.job.status for e in reader.events if e.job is not None][-1] == "succeeded"

    # Resume after the live points event that brought step 2: the rest, once each, then the end.
    middle = next(i for i, e in enumerate(reader.events) if 2 in _points([e]))
    resumed = Reader(f"{server.url}/v1/jobs/{job_id}/stream", key, last_event_id=reader.events[middle].id)
    resumed.join()
    assert resumed.kinds()[0] == "job" and resumed.kinds()[-1] == "end"
    assert _points(resumed.events) == _points(reader.events[middle + 1 :]) and 4 in _points(resumed.events)
    seen_lines = set(_lines(reader.events[: middle + 1]))
    assert _lines(resumed.events) == [line for line in _lines(reader.events) if line not in seen_lines]


def test_bad_ids_other_owners_and_the_per_owner_limit(server: ApiServer, key: str, db: sessionmaker[Session]) -> None:
    job_id = _running_job(server, key, db)
    auth = {"Authorization": f"Bearer {key}"}
    # 19 digits: past a 64-bit id, or within it but still more than the schema's 18 (both found by schemathesis)
    for wrong in ("1.2", "0.0.9300000000000000000", "04377.9164906769082248809.94", "1.1000000000000000000.1"):
        bad = httpx.get(f"{server.url}/v1/jobs/{job_id}/stream", headers={**auth, "Last-Event-ID": wrong})
        assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "header.Last-Event-ID"
    stranger = {"Authorization": f"Bearer {server.new_key()}"}
    for path in ("stream", "logs", "logs?follow=true"):
        foreign = httpx.get(f"{server.url}/v1/jobs/{job_id}/{path}", headers=stranger)
        missing = httpx.get(f"{server.url}/v1/jobs/999999/{path}", headers=stranger)
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json()["detail"].replace(str(job_id), "N") == missing.json()["detail"].replace("999999", "N")

    readers = [Reader(f"{server.url}/v1/jobs/{job_id}/stream", key) for _ in range(LIMIT)]
    assert [r.status for r in readers] == [200] * LIMIT
    # Streams hold no admission slot: with 2 slots and 3 streams open, a read still answers at once.
    started = time.monotonic()
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=auth, timeout=5).status_code == 200
    assert time.monotonic() - started < 2
    over = httpx.get(f"{server.url}/v1/jobs/{job_id}/stream", headers=auth)
    assert over.status_code == 429 and over.headers["Retry-After"]
    readers[0].drop()  # a dropped client gives its slot back
    wait_until(lambda: _status(server, auth, job_id) == 200, 10, what="the dropped stream's slot to come back")
    _write(db, job_id, 1, status="cancelling")
    with db() as session:
        lifecycle.transition(session, job_id=job_id, to="cancelled", reason="test")
        session.commit()
    for reader in readers[1:]:
        reader.join()
        assert reader.kinds()[-1] == "end"


def _status(server: ApiServer, auth: dict[str, str], job_id: int) -> int:
    with (
        httpx.Client(headers=auth, timeout=httpx.Timeout(5, read=5)) as http,
        http.stream("GET", f"{server.url}/v1/jobs/{job_id}/stream") as response,
    ):
        return response.status_code


def test_logs_page_filter_and_follow(server: ApiServer, key: str, db: sessionmaker[Session]) -> None:
    job_id = _running_job(server, key, db)
    _write(db, job_id, 1, lines=5)
    with db() as session:
        append_lines(session, job_id=job_id, attempt=2, lines=[LogLine(utcnow(), "WARNING", "worker", "second")])
        session.commit()
    with Client(server.url, key) as client:
        assert [line.message for line in client.logs(job_id)][-2:] == ["step 1 line 4", "second"]
        assert [line.message for line in client.logs(job_id, attempt=2)] == ["second"]
        page = httpx.get(
            f"{server.url}/v1/jobs/{job_id}/logs", params={"limit": 2}, headers={"Authorization": f"Bearer {key}"}
        ).json()
        assert len(page["items"]) == 2 and page["next_cursor"]
        followed: list[str] = []

        def follow() -> None:
            followed.extend(line.message for line in client.logs(job_id, follow=True))

        thread = threading.Thread(target=follow)
        thread.start()
        wait_until(lambda: len(followed) == 6, 10, what="the kept lines")
        _write(db, job_id, 2, lines=1, status="succeeded")
        thread.join(15)
    assert not thread.is_alive() and followed[-1] == "step 2 line 0" and len(followed) == 7
    env = {"MMKD_URL": server.url, "MMKD_API_KEY": key}
    printed = CliRunner().invoke(app, ["jobs", "logs", str(job_id), "--attempt", "2"], env=env)
    assert printed.exit_code == 0 and printed.output.strip().endswith("[2] WARNING worker: second")
    assert "step 1" not in printed.output
    # A finished job: every kept line, then the command ends.
    followed_cli = CliRunner().invoke(app, ["jobs", "logs", str(job_id), "-f"], env=env)
    assert followed_cli.exit_code == 0 and followed_cli.output.count("\n") == 7


def test_sdk_watch_and_wait_follow_the_stream(server: ApiServer, key: str, db: sessionmaker[Session]) -> None:
    job_id = _running_job(server, key, db)
    states: list[Any] = []

    def finish() -> None:
        for step in range(1, 4):
            time.sleep(0.2)
            _write(db, job_id, step)
        _write(db, job_id, 4, status="succeeded")

    writer = threading.Thread(target=finish)
    writer.start()
    with Client(server.url, key) as client:
        done = client.wait(job_id, timeout=30, on_update=states.append)
        writer.join()
        assert done.status == "succeeded" and states[-1].status == "succeeded"
        events = list(client.watch(job_id))  # a finished job: everything, then the end
    assert _points(events) == [1, 2, 3, 4] and events[-1].kind == "end"


def test_a_stream_whose_feed_stops_closes_instead_of_hanging(
    server: ApiServer, key: str, db: sessionmaker[Session]
) -> None:
    job_id = _running_job(server, key, db)
    reader = Reader(f"{server.url}/v1/jobs/{job_id}/stream", key)
    wait_until(lambda: reader.kinds()[:1] == ["job"], 10, what="the first event")
    with db() as session:  # the job goes (its owner deleted, say): the feed finds nothing more to follow
        session.execute(delete(Job).where(Job.id == job_id))
        session.commit()
    reader.join()
    assert "end" not in reader.kinds()  # closed without an end: a client reconnects and is told 404
    again = httpx.get(f"{server.url}/v1/jobs/{job_id}/stream", headers={"Authorization": f"Bearer {key}"})
    assert again.status_code == 404


class CuttingProxy:
    """A loopback TCP proxy to the server that cuts its first connection's answer just before
    ``cut_at`` (bytes) first appears, as a flaky network does; later connections pass whole."""

    def __init__(self, target_port: int, cut_at: bytes) -> None:
        self.target_port, self.cut_at = target_port, cut_at
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            limit = self.cut_at if self.connections == 1 else None
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, limit), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket, cut_at: bytes | None) -> None:
        tail = b""  # the end of what went before, so a pattern split across reads is found
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                window = tail + data
                if cut_at is not None and cut_at in window:
                    target.sendall(data[: max(window.index(cut_at) - len(tail), 0)])
                    break
                target.sendall(data)
                tail = window[-len(cut_at) :] if cut_at else b""
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.listener.close()


def test_sdk_watch_resumes_a_cut_stream_without_gaps_or_repeats(
    server: ApiServer, key: str, db: sessionmaker[Session]
) -> None:
    job_id = _running_job(server, key, db)
    for step in range(1, 41):
        _write(db, job_id, step)
    _write(db, job_id, 41, status="succeeded")
    port = int(server.url.rsplit(":", 1)[1])
    with Client(server.url, key) as direct:
        whole = list(direct.watch(job_id))
    assert [e.kind for e in whole][:3] == ["job", "metrics", "event"]
    proxy = CuttingProxy(port, cut_at=b"event: event")  # dies after the points, before the events
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", key, backoff=0.05) as flaky:
            resumed = list(flaky.watch(job_id))
    finally:
        proxy.close()
    assert proxy.connections >= 2  # it was cut and came back
    assert _points(resumed) == _points(whole) == list(range(1, 42))
    assert _lines(resumed) == _lines(whole) and resumed[-1].kind == "end"
