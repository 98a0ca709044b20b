"""``GET /metrics`` on a real server: requests counted by route template (never the raw path), jobs
by status as the database has them, live streams counted but not timed, and under ``mmkd serve
--workers 2`` the sum of both processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_servers import ApiServer, free_port
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from tests_support import wait_until

from jobs.models import Job

SPEC = {
    "name": "m",
    "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["kar"]},
    "method": {"name": "student_only"},
}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, **headers: str) -> Samples:
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    response.raise_for_status()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def requests_of(samples: Samples, route: str, status: str) -> float:
    return samples.get(("mmkd_api_requests_total", (("method", "GET"), ("route", route), ("status", status))), 0.0)


def test_routes_statuses_and_jobs_by_status(api_server: ApiServer) -> None:
    key = api_server.new_key()
    auth = {"Authorization": f"Bearer {key}"}
    before = scrape(api_server.url)
    job_id = httpx.post(f"{api_server.url}/v1/jobs", json=SPEC, headers=auth).json()["id"]
    for _ in range(3):
        assert httpx.get(f"{api_server.url}/v1/jobs/{job_id}", headers=auth).status_code == 200
    assert httpx.get(f"{api_server.url}/v1/jobs/987654", headers=auth).status_code == 404
    assert httpx.get(f"{api_server.url}/no/such/page", headers=auth).status_code == 404
    after = scrape(api_server.url)
    route = "/v1/jobs/{job_id}"
    assert requests_of(after, route, "200") - requests_of(before, route, "200") == 3
    assert requests_of(after, route, "404") - requests_of(before, route, "404") == 1
    assert requests_of(after, "unmatched", "404") - requests_of(before, "unmatched", "404") == 1
    assert not any(f"/v1/jobs/{job_id}" in str(labels) for _, labels in after)  # no raw paths
    timed = ("mmkd_api_request_duration_seconds_count", (("method", "GET"), ("route", route)))
    assert after[timed] - before.get(timed, 0.0) == 4
    engine = create_engine(api_server.database_url)
    with Session(engine) as session:
        queued = session.scalar(select(func.count()).select_from(Job).where(Job.status == "queued"))
    engine.dispose()
    assert after[("mmkd_jobs", (("status", "queued"),))] == queued >= 1
    assert after[("mmkd_queue_oldest_wait_seconds", ())] > 0


@pytest.fixture(scope="module")
def two_workers(api_server: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mmkd serve --workers 2`` on the same database, its own metrics folder."""
    port = free_port()
    env = {**api_server.env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("prom"))}
    mmkd = str(Path(sys.executable).with_name("mmkd"))
    command = [mmkd, "serve", "--port", str(port), "--workers", "2", "--no-migrate"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), 60, interval=0.2, what="mmkd serve --workers 2")
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_several_workers_sum_in_every_scrape(two_workers: str, api_server: ApiServer) -> None:
    auth = {"Authorization": f"Bearer {api_server.new_key()}"}
    for _ in range(40):  # new connections, so both processes answer some
        with httpx.Client(headers=auth) as http:
            assert http.get(f"{two_workers}/v1/whoami").status_code == 200
    for _ in range(4):  # whichever process answers the scrape, it shows both processes' counts
        assert requests_of(scrape(two_workers), "/v1/whoami", "200") == 40
