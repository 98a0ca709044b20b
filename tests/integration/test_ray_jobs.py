"""Jobs on 2 nodes of a local Ray cluster (two Ray nodes on this machine, one CPU each) through the API
and a real Celery worker, the job's process Ray Train's driver: a single-process job's records, and a
cancel that ends the job and its Train workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_helpers import LONG, TINY, events, job_row, running_past
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


def test_a_two_node_job_on_ray_succeeds_with_the_records_of_one(stack, worker) -> None:
    spec = {**TINY, "name": "tiny-ray", "resources": {"nodes": 2}, "checkpoint": {"every_epochs": 1}}
    with stack.client() as client:
        job = client.wait(client.submit(spec).id, timeout=300)
        assert job.status == "succeeded", job.status_reason
        assert {a.kind for a in client.artifacts(job.id)} == {"student", "summary", "metrics", "report", "log"}
        student = sorted(a.key.rsplit("/", 1)[1] for a in client.artifacts(job.id) if a.kind == "student")
    assert (job.result["world_size"], job.result["launcher"]) == (2, "ray")
    assert "model.json" in student and "weights.pt" in student  # rank 0's export, sent back from its node
    assert [e.kind for e in events(stack, job.id)] == ["created", "enqueued", "started", "succeeded"]
    row = job_row(stack, job.id)
    assert row.step == row.total_steps and row.last_checkpoint_key


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
