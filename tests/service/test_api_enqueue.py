"""Enqueue after commit: the message lands on Redis's ``gpu`` list; a dead broker leaves the job
queued with an event saying why."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from api_helpers import SPEC, Api, make_settings
from fastapi.testclient import TestClient

from jobs.keys import create_key
from jobs.publish import TRAIN_TASK, Queue
from service.main import create_app


def test_message_lands_on_gpu_queue(api: Api, redis_url: str) -> None:
    import redis

    job_id = api.submit(api.new_key()).json()["id"]
    messages = [json.loads(raw) for raw in redis.Redis.from_url(redis_url).lrange(Queue.GPU.value, 0, -1)]
    mine = [m for m in messages if json.loads(base64.b64decode(m["body"]))[0] == [job_id]]
    assert len(mine) == 1
    assert mine[0]["headers"]["task"] == TRAIN_TASK
    assert mine[0]["properties"]["delivery_info"]["routing_key"] == "gpu"


def test_unreachable_broker_keeps_job_queued_with_event(pg_database: str, tmp_path: Path) -> None:
    settings = make_settings(
        pg_database, "redis://127.0.0.1:1/0", tmp_path / "artifacts", enqueue_timeout_seconds=0.5
    )
    app = create_app(settings)
    with app.state.session_factory() as session:
        _, token = create_key(session, owner_name="broker-down")
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {token}"}
        response = client.post("/v1/jobs", json=SPEC, headers=headers)
        assert response.status_code == 201
        assert response.json()["status"] == "queued"
        events = client.get(f"/v1/jobs/{response.json()['id']}/events", headers=headers).json()["items"]
    assert [e["kind"] for e in events] == ["created", "enqueue_failed"]
    assert events[1]["reason"]


def test_embedded_sqlite_broker_receives_the_message(pg_database: str, tmp_path: Path) -> None:
    import sqlite3

    broker_file = tmp_path / "broker.db"
    settings = make_settings(pg_database, f"sqla+sqlite:///{broker_file}", tmp_path / "artifacts")
    app = create_app(settings)
    with app.state.session_factory() as session:
        _, token = create_key(session, owner_name="embedded")
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {token}"}
        job_id = client.post("/v1/jobs", json=SPEC, headers=headers).json()["id"]
        events = client.get(f"/v1/jobs/{job_id}/events", headers=headers).json()["items"]
        assert client.get("/readyz").json()["checks"]["broker"] == "ok"
    assert [e["kind"] for e in events] == ["created", "enqueued"]
    with sqlite3.connect(broker_file) as db:
        query = "SELECT payload FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id WHERE q.name = ?"
        rows = db.execute(query, ("gpu",)).fetchall()
    payloads = [json.loads(row[0]) for row in rows]
    assert [json.loads(base64.b64decode(p["body"]))[0] for p in payloads] == [[job_id]]


def test_a_fast_worker_still_lists_after_enqueued(api: Api) -> None:
    from jobs import lifecycle
    from jobs.models import Job

    def enqueue_and_start_at_once(job_id: int) -> None:  # the worker wins the race to the database
        job = api.session.get(Job, job_id)
        assert job is not None
        lifecycle.transition(api.session, job_id=job.id, to="running", reason="fast worker")
        api.session.commit()

    api.app.state.enqueue = enqueue_and_start_at_once
    token = api.new_key()
    job_id = api.submit(token).json()["id"]
    events = api.client.get(f"/v1/jobs/{job_id}/events", headers=api.auth(token)).json()["items"]
    assert [e["kind"] for e in events] == ["created", "enqueued", "started"]
