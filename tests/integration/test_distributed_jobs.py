"""Jobs on 2 processes of one host through the API and a real Celery worker (PostgreSQL, Redis, moto;
torchrun, gloo): a rank killed mid-run resumed from the newest checkpoint by torchrun's restart within
the same attempt, ending with a single-process job's records; a cancel that ends every rank; and
sharded datasets on S3 streamed by both ranks: a raw prefix, and a folder uploaded in presigned
parts. Several hosts (Ray Train): test_ray_jobs.py."""

from __future__ import annotations

import os
import signal
import uuid
from importlib import resources
from pathlib import Path

import boto3
import numpy as np
import pytest
from integration_helpers import LONG, events, job_row, running_past
from tests_support import process_alive

pytestmark = pytest.mark.slow

TWO = {"resources": {"procs_per_node": 2}}


RAW_BUCKET = f"mmkd-raw-{uuid.uuid4().hex[:8]}"  # the users' own data, under an allowed prefix


@pytest.fixture(scope="module")
def stack_env(moto_server) -> dict[str, str]:
    """Raw data allowed under s3://RAW_BUCKET/shards."""
    boto3.client("s3", endpoint_url=moto_server.endpoint_url).create_bucket(Bucket=RAW_BUCKET)
    return {"MMKD_DATA_ALLOW": f"s3://{RAW_BUCKET}/shards"}


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


def test_a_sharded_dataset_on_s3_streams_to_every_rank(stack, worker, tmp_path: Path) -> None:
    """mfeat as one .npy per array under an allowed prefix: the job's process scans it, both ranks
    reopen the prefix and read their blocks by ranged GETs, and the job succeeds on the streamed rows."""
    from core.data.shards import write_shards

    with np.load(resources.files("core.data.builtin").joinpath("mfeat.npz")) as archive:
        arrays = {key: archive[key] for key in ("fou", "zer", "kar", "label", "class_names")}
    s3 = boto3.client("s3", endpoint_url=stack.moto.endpoint_url)
    for path in write_shards(arrays, tmp_path / "mfeat", layout="npy"):
        s3.upload_file(str(path), RAW_BUCKET, f"shards/mfeat/{path.name}")
    spec = {
        **LONG,
        "name": "sharded",
        "dataset": {**LONG["dataset"], "name": None, "uri": f"s3://{RAW_BUCKET}/shards/mfeat/"},
        "method": {"name": "student_only"},
        "train": {**LONG["train"], "epochs": 2, "lr": 0.01},
        **TWO,
    }
    with stack.client() as client:
        job = client.wait(client.submit(spec).id, timeout=240)
    assert job.status == "succeeded", job.status_reason
    assert (job.result["world_size"], job.result["launcher"]) == (2, "torchrun")
    assert job.result["data"]["shards"] == {"layout": "npy", "files": 5, "blocks": 1}
    assert job.result["student"]["accuracy"] > 0.4  # it learned (10 classes; one file: 0.55 in-process)


def test_a_folder_of_shards_uploaded_in_presigned_parts_trains_by_id_on_every_rank(
    stack, worker, tmp_path: Path
) -> None:
    """The SDK sends a folder of .npz shards through presigned parts into the service's store; the
    job names it by id, its process resolves it for the owner, both ranks reopen the folder."""
    from core.data.shards import write_shards

    with np.load(resources.files("core.data.builtin").joinpath("mfeat.npz")) as archive:
        arrays = {key: archive[key] for key in ("fou", "zer", "kar", "label", "class_names")}
    write_shards(arrays, tmp_path / "mfeat", rows_per_shard=500)
    with stack.client() as client:
        dataset = client.upload_dataset(tmp_path / "mfeat", name="mfeat-shards")
        assert dataset.shards == {"layout": "npz", "files": 4} and dataset.n_samples == 2000
        spec = {
            **LONG,
            "name": "sharded-upload",
            "dataset": {**LONG["dataset"], "name": None, "id": dataset.id},
            "method": {"name": "student_only"},
            "train": {**LONG["train"], "epochs": 2, "lr": 0.01},
            **TWO,
        }
        job = client.wait(client.submit(spec).id, timeout=240)
    assert job.status == "succeeded", job.status_reason
    assert job.result["data"]["source"] == f"dataset:{dataset.id}/"
    assert job.result["data"]["shards"] == {"layout": "npz", "files": 4, "blocks": 4}
    assert job.result["student"]["accuracy"] > 0.4
