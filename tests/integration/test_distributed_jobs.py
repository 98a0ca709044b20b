"""Jobs on 2 processes through the API and a real Celery worker (PostgreSQL, Redis, moto): on this host
(torchrun, gloo), a rank killed mid-run resumed from the newest checkpoint by torchrun's restart
within the same attempt, ending with a single-process job's records, and a cancel that ends every
rank; and on 2 nodes of a local Ray cluster (Ray Train), a single-process job's records."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_helpers import LONG, TINY, events, job_row, running_past
from tests_support import process_alive

pytestmark = pytest.mark.slow

TWO = {"resources": {"procs_per_node": 2}}


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
    process = stack.start_worker("worker-ranks")
    yield process
    process.stop()


def rank_processes(job_id: int) -> dict[int, int]:
    """The running ranks of ``job_id`` (any attempt): {pid: rank}, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker.ranks" in command and any(f"/job-{job_id}-attempt-".encode() in part for part in command):
            rank = next((int(v.split(b"=")[1]) for v in environment if v.startswith(b"RANK=")), -1)
            if rank >= 0 and process_alive(int(entry.name)):  # a rank, not torchrun's agent
                found[int(entry.name)] = rank
    return found


def test_a_killed_rank_is_restarted_and_the_job_resumes_from_its_checkpoint(stack, worker) -> None:
    with stack.client() as client:
        shorter = {**LONG, "train": {**LONG["train"], "epochs": 4}}  # 76 steps: killed past 25, resumed
        job_id = client.submit({**shorter, "name": "long-ranks", **TWO}).id
        seen = stack.wait_for(lambda: running_past(stack, job_id, 25), timeout=180, what="past a checkpoint")
        ranks = stack.wait_for(lambda: rank_processes(job_id), what="the ranks")
        victim = next(pid for pid, rank in ranks.items() if rank == 1)
        os.kill(victim, signal.SIGKILL)
        job = client.wait(job_id, timeout=240)
    assert job.status == "succeeded" and job.attempts == 1  # torchrun restarted the ranks in the same attempt
    assert (job.result["world_size"], job.result["launcher"]) == (2, "torchrun")
    assert job.spec["resources"]["procs_per_node"] == 2
    with stack.client() as client:
        assert {a.kind for a in client.artifacts(job_id)} == {"student", "summary", "metrics", "report", "log"}
    kinds = [e.kind for e in events(stack, job_id)]
    assert kinds == ["created", "enqueued", "started", "resumed", "succeeded"]  # one attempt: no requeue
    resumed = [event for event in events(stack, job_id) if event.kind == "resumed"]
    assert len(resumed) == 1 and resumed[0].data["step"] >= int(
        seen.last_checkpoint_key.split("step-")[1].split(".")[0]
    )
    assert job.result["resumed_from_step"] == resumed[0].data["step"]
    assert victim not in rank_processes(job_id)


def test_cancel_stops_every_rank(stack, worker) -> None:
    with stack.client() as client:
        job_id = client.submit({**LONG, "name": "long-cancel", **TWO}).id
        stack.wait_for(lambda: running_past(stack, job_id, 12), timeout=180, what="past a checkpoint")
        assert len(stack.wait_for(lambda: rank_processes(job_id), what="the ranks")) == 2
        assert client.cancel(job_id).status == "cancelling"
        job = stack.wait_for(lambda: job_row(stack, job_id).status == "cancelled" and job_row(stack, job_id))
    assert job.step < job.total_steps
    stack.wait_for(lambda: not rank_processes(job_id), timeout=30, what="every rank ended")


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
