"""Crash resume, duplicate delivery and storage outages, with real Celery workers."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
import pytest
from integration_helpers import LONG, TINY, events, job_row, publish_again, running_past
from sqlalchemy import select
from tests_support import process_alive

from core.metrics import Point, from_jsonl
from jobs.models import Artifact, MetricPoint

pytestmark = pytest.mark.slow


@contextmanager
def workers(stack, *names: str, beat: bool = False) -> Iterator[list]:
    """Workers that are stopped when the block ends, and ready when it starts."""
    started = [stack.start_worker(name, beat=beat) for name in names]
    try:
        stack.wait_for(lambda: all("ready." in p.log.read_text() for p in started), what="workers ready")
        yield started
    finally:
        for process in started:
            process.stop()


def _artifact_keys(stack, job_id: int, *, kind: str | None = None) -> list[str]:
    """The job's artifact keys with its id as ``ID``: the results (every kind but ``log``), or one kind."""
    query = select(Artifact.key).where(Artifact.job_id == job_id)
    query = query.where(Artifact.kind == kind) if kind else query.where(Artifact.kind != "log")
    with stack.sessions() as session:
        return sorted(key.replace(f"jobs/{job_id}/", "jobs/ID/") for key in session.scalars(query))


def _metric_points(stack, job_id: int) -> list[Point]:
    with stack.sessions() as session:
        rows = session.execute(
            select(MetricPoint.step, MetricPoint.epoch, MetricPoint.name, MetricPoint.value)
            .where(MetricPoint.job_id == job_id)
            .order_by(MetricPoint.step, MetricPoint.id)
        )
        return [Point(*row) for row in rows]


def _succeeded(stack, job_id: int):
    job = job_row(stack, job_id)
    assert job.status not in ("failed", "cancelled"), job.status_reason
    return job.status == "succeeded" and job


def test_killed_worker_resumes_from_its_checkpoint(stack) -> None:
    shorter = {**LONG, "train": {**LONG["train"], "epochs": 4}}  # 76 steps: killed past 25, resumed, compared
    with stack.client() as client:
        job_id = client.submit(shorter).id
        with workers(stack, "doomed") as (doomed,):
            killed = stack.wait_for(lambda: running_past(stack, job_id, 25), what="training past a checkpoint")
            doomed.signal(signal.SIGKILL)
        with workers(stack, "rescuer", beat=True):
            job = stack.wait_for(lambda: _succeeded(stack, job_id), timeout=180, what="resumed job succeeded")
            reference_id = client.submit(shorter).id
            reference = stack.wait_for(lambda: _succeeded(stack, reference_id), timeout=180, what="reference")
    assert (job.attempts, reference.attempts) == (2, 1)
    kinds = [event.kind for event in events(stack, job_id)]
    assert kinds.count("requeued") == 1 and kinds.count("started") == 2 and kinds[-1] == "succeeded"
    resumed = [event for event in events(stack, job_id) if event.kind == "resumed"]
    # The worker may checkpoint again between our look at the database and the SIGKILL, so the
    # resume point is at or after the checkpoint we saw, on the 10-step cadence, and before the end.
    seen = int(re.search(r"step-(\d+)", killed.last_checkpoint_key)[1])
    assert len(resumed) == 1 and seen <= resumed[0].data["step"] < job.total_steps
    assert resumed[0].data["step"] % 10 == 0
    assert job.result["resumed_from_step"] == resumed[0].data["step"]
    for network in ("student", "teacher", "auxiliary"):
        assert job.result[network] == pytest.approx(reference.result[network], abs=1e-6)
    assert _artifact_keys(stack, job_id) == _artifact_keys(stack, reference_id)  # one final set
    assert _artifact_keys(stack, job_id, kind="log") == ["jobs/ID/logs/attempt-2.log"]  # the killed one left none
    s3 = boto3.client("s3", endpoint_url=stack.moto.endpoint_url)
    body = s3.get_object(Bucket=stack.bucket, Key=f"mmkd/jobs/{job_id}/metrics.jsonl")["Body"].read()
    recorded = from_jsonl(body.decode())
    assert recorded == _metric_points(stack, job_id)  # the file is the database's record, rendered once
    steps = [point.step for point in recorded if point.name == "train/total"]
    assert steps == list(range(1, job.total_steps + 1))  # whole history: no duplicates, no gaps


def test_a_stuck_step_fails_as_stalled_and_its_process_is_ended(stack) -> None:
    """The heartbeat fails the job (its checkpoint kept) and ends the hung pool child; the message that
    comes back because its worker was lost does not start the job again."""
    pid_file = stack.home / "stuck.pid"
    stuck = stack.start_stuck_worker("stuck", stuck_at_step=15, pid_file=pid_file, MMKD_STALL_SECONDS="3")
    try:
        stack.wait_for(lambda: "ready." in stuck.log.read_text(), what="stuck worker ready")
        with stack.client() as client:
            job_id = client.submit(LONG).id
        job = stack.wait_for(lambda: (j := job_row(stack, job_id)).status == "failed" and j, what="stalled")
        stuck_pid = int(pid_file.read_text())
        stack.wait_for(lambda: not process_alive(stuck_pid), timeout=30, what="the stuck process ended")
    finally:
        stuck.stop()
    assert (job.error, job.attempts) == ("stalled", 1) and 10 <= job.step <= 15  # points flush in batches
    assert "after step 15" in job.status_reason
    assert job.status_reason.endswith(f"last checkpoint kept: jobs/{job_id}/checkpoints/step-10.pt")
    s3 = boto3.client("s3", endpoint_url=stack.moto.endpoint_url)
    kept = s3.list_objects_v2(Bucket=stack.bucket, Prefix=f"mmkd/jobs/{job_id}/checkpoints/")
    assert [item["Key"].rsplit("/", 1)[1] for item in kept["Contents"]] == ["step-10.pt"]
    kinds = [event.kind for event in events(stack, job_id)]
    assert kinds.count("started") == 1 and kinds[-1] == "failed" and _artifact_keys(stack, job_id) == []


def test_two_workers_and_a_duplicate_delivery_train_once(stack) -> None:
    with workers(stack, "twin-a", "twin-b") as twins, stack.client() as client:
        job_id = client.submit(TINY).id
        publish_again(stack, job_id)
        stack.wait_for(lambda: _succeeded(stack, job_id), timeout=120, what="job succeeded")
        stack.wait_for(lambda: any(f"job {job_id} is not queued" in p.log.read_text() for p in twins))
    kinds = [event.kind for event in events(stack, job_id)]
    assert kinds.count("started") == 1 and job_row(stack, job_id).attempts == 1


def test_storage_outage_fails_with_a_storage_reason(stack) -> None:
    with workers(stack, "s3-victim"), stack.client() as client:
        job_id = client.submit(LONG).id
        before = stack.wait_for(lambda: running_past(stack, job_id, 12), what="training past a checkpoint")
        stack.moto.stop()
        try:
            job = stack.wait_for(lambda: job_row(stack, job_id).status == "failed" and job_row(stack, job_id))
        finally:
            stack.moto.start()
            stack.ensure_bucket()
    assert (job.error, job.attempts, job.max_attempts) == ("storage_unreachable", 3, 3)
    assert "storage unreachable after retries" in job.status_reason
    kinds = [event.kind for event in events(stack, job_id)]
    assert kinds.count("started") == 3 and kinds.count("requeued") == 2 and kinds[-1] == "failed"
    assert _artifact_keys(stack, job_id) == []  # nothing recorded that was not stored (a log, maybe, once moto is back)
    assert job.last_checkpoint_key.startswith(f"jobs/{job_id}/checkpoints/step-")
    assert job.step >= before.step
