"""Keyset pagination: newest first, filters before the limit, stable while rows are inserted."""

from __future__ import annotations

import pytest
from api_helpers import Api

from jobs import lifecycle
from jobs.models import Job

pytestmark = pytest.mark.parametrize("backend", ["pg", "sqlite"], indirect=True)


def _pages(api: Api, token: str, insert_between: bool = False, **params: object) -> list[list[int]]:
    pages: list[list[int]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        body = api.client.get("/v1/jobs", params=query, headers=api.auth(token)).json()
        pages.append([item["id"] for item in body["items"]])
        if insert_between:
            api.submit(token)
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def test_pages_cover_every_job_once_newest_first_while_inserting(api: Api) -> None:
    token = api.new_key()
    existing = [api.submit(token).json()["id"] for _ in range(7)]
    pages = _pages(api, token, insert_between=True, limit=3)
    seen = [job_id for page in pages for job_id in page]
    assert seen == sorted(existing, reverse=True)
    assert [len(p) for p in pages] == [3, 3, 1]


def test_status_filter_applies_before_limit(api: Api) -> None:
    token = api.new_key()
    ids = [api.submit(token).json()["id"] for _ in range(6)]
    for job_id in ids[::2]:
        job = api.session.get(Job, job_id)
        assert job is not None
        lifecycle.transition(api.session, job_id=job.id, to="running")
    api.session.commit()
    pages = _pages(api, token, limit=2, status="running")
    assert [job_id for page in pages for job_id in page] == sorted(ids[::2], reverse=True)
    both = _pages(api, token, limit=10, status=["running", "queued"])
    assert both == [sorted(ids, reverse=True)]


def test_empty_listing(api: Api) -> None:
    body = api.client.get("/v1/jobs", headers=api.auth(api.new_key())).json()
    assert body == {"items": [], "next_cursor": None}
