"""Jobs on 2 nodes of a local Ray cluster (two Ray nodes on this machine, one CPU each) through the API
and a real Celery worker, the job's process Ray Train's driver: a job that succeeds with a
single-process job's records although a Train worker is killed mid-run (Ray Train restarts the group,
which resumes from the newest checkpoint within the same attempt), and a cancel that ends the job and
its Train workers."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_helpers import LONG, events, job_row, running_past
from tests_support import process_alive

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack_env() -> Iterator[dict[str, str]]:
    """A Ray cluster of two nodes on this machine (one CPU each), for the API and the worker."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield {"MMKD_RAY_ADDRESS": cluster.address}
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def worker(stack):
    """One worker for the module."""
    process = stack.start_worker("worker-ray")
    yield process
    process.stop()


def ray_train_workers() -> list[int]:
    """Processes of Ray Train's worker actors (``ray::RayTrainWorker...``) on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if command.startswith(b"ray::RayTrainWorker") and process_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_cancel_on_ray_ends_the_job_and_its_train_workers(stack, worker) -> None:
    """The job's process is Ray Train's driver: a cancel reaches every rank through rank 0's relay, the
    job ends cancelled, and no Train worker outlives it."""
    with stack.client() as client:
        job_id = client.submit({**LONG, "name": "ray-cancel", "resources": {"nodes": 2}}).id
        stack.wait_for(lambda: running_past(stack, job_id, 12), timeout=240, what="past a checkpoint")
        assert len(ray_train_workers()) == 2
        assert client.cancel(job_id).status == "cancelling"
        job = stack.wait_for(lambda: job_row(stack, job_id).status == "cancelled" and job_row(stack, job_id))
    assert job.step < job.total_steps
    stack.wait_for(lambda: not ray_train_workers(), timeout=60, what="every Train worker ended")


def test_a_two_node_job_survives_a_killed_train_worker_with_the_records_of_one(stack, worker) -> None:
    """A job on 2 Ray nodes with a Train worker killed mid-run (FailureConfig): Ray Train replaces the
    group, rank 0 of the new one loads the newest checkpoint through the driver, and the job ends as one
    attempt with the records of a single-process job that resumed once (a torchrun job's, too)."""
    with stack.client() as client:
        shorter = {**LONG, "train": {**LONG["train"], "epochs": 4}}  # 76 steps: killed past 25, resumed
        job_id = client.submit({**shorter, "name": "ray-killed", "resources": {"nodes": 2}}).id
        seen = stack.wait_for(lambda: running_past(stack, job_id, 25), timeout=240, what="past a checkpoint")
        victims = stack.wait_for(lambda: len(ray_train_workers()) == 2 and ray_train_workers(), what="the workers")
        os.kill(victims[-1], signal.SIGKILL)
        job = client.wait(job_id, timeout=300)
    assert job.status == "succeeded" and job.attempts == 1, job.status_reason  # restarted within the attempt
    assert (job.result["world_size"], job.result["launcher"]) == (2, "ray")
    with stack.client() as client:
        assert {a.kind for a in client.artifacts(job_id)} == {"student", "summary", "metrics", "report", "log"}
        student = sorted(a.key.rsplit("/", 1)[1] for a in client.artifacts(job_id) if a.kind == "student")
    assert "model.json" in student and "weights.pt" in student  # rank 0's export, sent back from its node
    row = job_row(stack, job_id)
    assert row.step == row.total_steps and row.last_checkpoint_key
    kinds = [e.kind for e in events(stack, job_id)]
    assert kinds == ["created", "enqueued", "started", "resumed", "succeeded"]
    resumed = next(event for event in events(stack, job_id) if event.kind == "resumed")
    assert resumed.data["step"] >= int(seen.last_checkpoint_key.split("step-")[1].split(".")[0])
    assert victims[-1] not in ray_train_workers()
