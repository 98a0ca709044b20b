"""Limits the API answers clearly: a per-owner queued-job limit (429 with Retry-After), an exhausted
connection pool (503 with Retry-After, not a hang or a 500), and a publish that failed while the
broker was down, published again by the reaper's next pass once it answers."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
from api_helpers import SPEC, make_settings
from fastapi.testclient import TestClient

from jobs.db import engine_for, session_factory
from jobs.keys import create_key
from jobs.migrate import upgrade
from jobs.publish import Queue, publisher
from jobs.reaper import reap_once
from service.main import create_app


def _client_and_token(settings) -> tuple[TestClient, dict[str, str]]:
    app = create_app(settings)
    with app.state.session_factory() as session:
        _, token = create_key(session, owner_name=f"limits-{uuid.uuid4().hex[:8]}")
    return TestClient(app), {"Authorization": f"Bearer {token}"}


def test_queued_limit_is_a_429_with_retry_after(pg_database: str, redis_url: str, tmp_path: Path) -> None:
    settings = make_settings(pg_database, redis_url, tmp_path / "artifacts", max_queued_per_owner=2)
    client, auth = _client_and_token(settings)
    with client:
        first = client.post("/v1/jobs", json=SPEC, headers={**auth, "Idempotency-Key": "first"})
        assert first.status_code == 201
        assert client.post("/v1/jobs", json=SPEC, headers=auth).status_code == 201
        refused = client.post("/v1/jobs", json=SPEC, headers=auth)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) > 0
        assert "2 queued jobs" in refused.json()["detail"] and "MMKD_MAX_QUEUED_PER_OWNER" in refused.json()["detail"]
        replay = client.post("/v1/jobs", json=SPEC, headers={**auth, "Idempotency-Key": "first"})
        assert (replay.status_code, replay.json()["id"]) == (200, first.json()["id"])  # a replay is no new job
        assert client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=auth).status_code == 200
        assert client.post("/v1/jobs", json=SPEC, headers=auth).status_code == 201
        listed = client.get("/v1/jobs", params={"status": "queued"}, headers=auth).json()["items"]
    assert len(listed) == 2


def test_exhausted_pool_is_a_503_with_retry_after(pg_database: str, redis_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        pg_database, redis_url, tmp_path / "artifacts", db_pool_size=1, threads=1, db_pool_timeout_seconds=0.5
    )
    client, auth = _client_and_token(settings)
    engine = engine_for(pg_database, 1, max_overflow=1, pool_timeout=0.5)  # the app's engine: 1 + 1 connections
    held = [engine.connect(), engine.connect()]
    try:
        with client:
            busy = client.post("/v1/jobs", json=SPEC, headers=auth)
            assert client.get("/healthz").status_code == 200  # the probe shares nothing with the handlers
            assert client.get("/readyz").json()["checks"]["database"] == "ok"
            for connection in held:
                connection.close()
            held = []
            assert client.post("/v1/jobs", json=SPEC, headers=auth).status_code == 201
    finally:
        for connection in held:
            connection.close()
    assert busy.status_code == 503
    assert busy.headers["content-type"] == "application/problem+json"
    assert busy.headers["retry-after"] == "1"
    assert "busy" in busy.json()["detail"]


def test_failed_publish_is_published_again_once_the_broker_answers(
    new_postgres_database: Callable[[str], str], redis_url: str, tmp_path: Path
) -> None:
    database_url = new_postgres_database("mmkd_republish")  # the reaper sees only this test's jobs
    upgrade(database_url)
    down = make_settings(database_url, "redis://127.0.0.1:1/0", tmp_path / "a", enqueue_timeout_seconds=0.5)
    client, auth = _client_and_token(down)
    with client:
        job_id = client.post("/v1/jobs", json=SPEC, headers=auth).json()["id"]
        events = client.get(f"/v1/jobs/{job_id}/events", headers=auth).json()["items"]
    assert [event["kind"] for event in events] == ["created", "enqueue_failed"]

    sessions = session_factory(engine_for(database_url))
    up = make_settings(database_url, redis_url, tmp_path / "a")
    result = reap_once(sessions, enqueue=publisher(up), requeue_after_seconds=600)  # not stale: 600 s away
    assert result.retried == [job_id]
    messages = [json.loads(raw) for raw in redis.Redis.from_url(redis_url).lrange(Queue.GPU.value, 0, -1)]
    assert [job_id] in [json.loads(base64.b64decode(message["body"]))[0] for message in messages]
    with TestClient(create_app(up)) as client:
        events = client.get(f"/v1/jobs/{job_id}/events", headers=auth).json()["items"]
    assert [event["kind"] for event in events] == ["created", "enqueue_failed", "enqueued"]


def test_admission_lets_probes_and_uploads_past_a_full_house() -> None:
    import asyncio

    from service.admission import Admission

    admitted: list[str] = []
    statuses: list[int] = []
    release = asyncio.Event()

    async def app(scope, receive, send) -> None:  # stands in for the API: "/busy" holds its slot
        admitted.append(scope["path"])
        if scope["path"] == "/busy":
            await release.wait()

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    def request(method: str, path: str):
        return admission({"type": "http", "method": method, "path": path, "headers": []}, receive, send)

    admission = Admission(app, limit=1, max_wait_seconds=0.2)

    async def run() -> None:
        busy = asyncio.create_task(request("GET", "/busy"))
        await asyncio.sleep(0.01)  # the one slot is taken
        for method, path in (("GET", "/healthz"), ("GET", "/readyz"), ("POST", "/v1/datasets"), ("GET", "/v1/jobs")):
            await request(method, path)
        release.set()
        await busy

    asyncio.run(run())
    assert admitted == ["/busy", "/healthz", "/readyz", "/v1/datasets"]
    assert statuses == [503]  # the ordinary request waited its 0.2 s, then was told to retry
