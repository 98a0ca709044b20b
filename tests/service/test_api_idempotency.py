"""Idempotency-Key: same key + same body is the same job (one row, one enqueue); another body is 409;
concurrent identical submits race on the database's unique constraint, not on a check."""

from __future__ import annotations

import base64
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from api_helpers import SPEC, Api
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.spec import JobSpec
from jobs import lifecycle
from jobs.errors import ConflictError
from jobs.keys import get_or_create_owner
from jobs.models import Job


def _published_job_ids(redis_url: str) -> list[int]:
    client = redis.Redis.from_url(redis_url)
    messages = [json.loads(raw) for raw in client.lrange("gpu", 0, -1)]
    return [
        json.loads(base64.b64decode(m["body"]))[0][0]
        for m in messages
        if m["headers"]["task"] == "mmkd.train"
    ]


def test_replay_returns_same_job_without_second_enqueue(api: Api, redis_url: str) -> None:
    token = api.new_key()
    key = str(uuid.uuid4())
    first = api.submit(token, idempotency_key=key)
    second = api.submit(token, idempotency_key=key)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert _published_job_ids(redis_url).count(first.json()["id"]) == 1


def test_same_key_other_body_is_409(api: Api) -> None:
    token = api.new_key()
    key = "reused"
    assert api.submit(token, idempotency_key=key).status_code == 201
    other = {**SPEC, "name": "another"}
    response = api.submit(token, other, idempotency_key=key)
    assert response.status_code == 409
    assert "Idempotency-Key 'reused'" in response.json()["detail"]


def test_concurrent_submits_in_the_service_make_one_row(committed_pg: Session, pg_database: str) -> None:
    from jobs.db import engine_for, session_factory

    owner = get_or_create_owner(committed_pg, name=f"race-{uuid.uuid4().hex[:8]}")
    committed_pg.commit()
    factory = session_factory(engine_for(pg_database))
    spec = JobSpec.model_validate(SPEC)

    def submit(_: int) -> tuple[int, bool]:
        with factory() as session:
            job, created = lifecycle.submit_job(
                session, owner_id=owner.id, spec=spec, idempotency_key="same", max_attempts=3
            )
            return job.id, created

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(submit, range(16)))
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    count = committed_pg.scalar(select(func.count()).select_from(Job).where(Job.owner_id == owner.id))
    assert count == 1
    with pytest.raises(ConflictError):
        other = JobSpec.model_validate({**SPEC, "name": "other"})
        with factory() as session:
            lifecycle.submit_job(
                session, owner_id=owner.id, spec=other, idempotency_key="same", max_attempts=3
            )


def test_concurrent_http_retries_make_one_job(api_server: Any, redis_url: str) -> None:
    token = api_server.new_key()
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())}

    def submit(_: int) -> httpx.Response:
        return httpx.post(f"{api_server.url}/v1/jobs", json=SPEC, headers=headers, timeout=30)

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(submit, range(12)))
    assert sorted(r.status_code for r in responses) == [200] * 11 + [201]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert _published_job_ids(redis_url).count(ids.pop()) == 1
