"""A real ``mmkd worker`` (Celery prefork) serving Prometheus metrics: after a short job its
/metrics shows the job started and finished with its outcome, step times, a checkpoint, the upload,
the queue wait and lease renewals, summed from the pool child that ran it."""

from __future__ import annotations

from typing import Any

import httpx
from integration_helpers import TINY
from live_servers import free_port
from prometheus_client.parser import text_string_to_metric_families
from stack import MMKD, Stack


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_worker_serves_its_jobs_metrics(stack: Stack) -> None:
    port = free_port()
    command = [MMKD, "worker", "--queues", "gpu", "--concurrency", "1"]
    stack.spawn(command, "metrics-worker", MMKD_WORKER_METRICS_PORT=str(port), MMKD_HEARTBEAT_SECONDS="0.5")
    url = f"http://127.0.0.1:{port}/metrics"
    stack.wait_for(lambda: _up(url), 60, what="the worker's /metrics")
    spec = {**TINY, "train": {**TINY["train"], "epochs": 4}, "checkpoint": {"every_epochs": 2}}
    with stack.client() as client:
        job = client.wait(client.submit(spec).id, timeout=120)
    samples = stack.wait_for(lambda: _finished(url), 30, what="the finished job in /metrics")
    assert samples[("mmkd_worker_jobs_started_total", ())] >= 1
    assert samples[("mmkd_worker_jobs_finished_total", (("outcome", "succeeded"),))] >= 1
    steps = job.result["steps"]
    assert samples[("mmkd_worker_step_seconds_count", ())] >= steps - 1  # one per step after the first
    assert samples[("mmkd_worker_step_seconds_sum", ())] > 0
    assert samples[("mmkd_worker_checkpoint_seconds_count", ())] >= 2
    assert samples[("mmkd_worker_upload_seconds_count", ())] >= 1
    assert samples[("mmkd_worker_queue_wait_seconds_count", ())] >= 1
    assert samples[("mmkd_worker_lease_renewals_total", ())] >= 1


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _finished(url: str) -> Any:
    samples = _samples(url)
    return samples if samples.get(("mmkd_worker_jobs_finished_total", (("outcome", "succeeded"),))) else None
