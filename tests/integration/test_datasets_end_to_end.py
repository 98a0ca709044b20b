"""Datasets end to end on PostgreSQL, Redis, moto's S3 and a real worker: owner B can neither train
on, list, read, delete nor probe owner A's dataset, nor reach A's object (or a file on the worker)
through a raw URI, at submit or in the worker; A trains on its own upload to success."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from integration_helpers import job_row, publish_again
from mmkd_client import Client, NotFound, ValidationFailed
from sqlalchemy.orm import Session

from jobs.datasets import NO_SUCH_DATASET, URI_NOT_ALLOWED
from jobs.keys import create_key
from jobs.models import Dataset, Job
from worker.data import NO_DATASET, NOT_ALLOWED

MMKD = str(Path(sys.executable).with_name("mmkd"))


@pytest.fixture(scope="module")
def worker(stack: Any) -> Any:
    """One worker for this module's jobs; its children are reused, so torch is imported once each."""
    command = [MMKD, "worker", "--queues", "gpu", "--concurrency", "2"]
    process = stack.spawn(command, "worker-datasets", MMKD_MAX_TASKS_PER_CHILD="0")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def owners(stack: Any) -> dict[str, tuple[int, str]]:
    """Owners A and B: (owner id, API key) each."""
    keys = {}
    with Session(stack.engine) as session:
        for name in ("owner-a", "owner-b"):
            key, token = create_key(session, owner_name=name)
            keys[name] = (key.owner_id, token)
    return keys


def client(stack: Any, owners: dict[str, tuple[int, str]], name: str) -> Client:
    """An SDK client acting for ``name``."""
    return Client(stack.api_url, owners[name][1], backoff=0.05)


def dataset_file(folder: Path) -> Path:
    """Three separable classes over two modalities with names nobody else should learn."""
    rng = np.random.default_rng(3)
    label = np.arange(90) % 3
    image = rng.normal(size=(90, 6)).astype(np.float32) + label[:, None]
    audio = rng.normal(size=(90, 2, 8)).astype(np.float32) + label[:, None, None]
    path = folder / "private.npz"
    np.savez(path, secretimage=image, secretaudio=audio, label=label)
    return path


def stored_key(stack: Any, dataset_id: int) -> str:
    """Where the dataset's object lives in the store (the row records it)."""
    with stack.sessions() as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None and dataset.key.startswith(f"datasets/{dataset.owner_id}/")
        return dataset.key


def spec_on(dataset: dict[str, Any]) -> dict[str, Any]:
    """A tiny job (seconds on a CPU) on ``dataset``: an id, a uri or a built-in name."""
    return {
        "name": "own-data",
        "dataset": {**dataset, "primary": ["secretimage"], "auxiliary": ["secretaudio"]},
        "model": {"hidden_dim": 16, "repr_dim": 8, "encoder_layers": 1},
        "method": {"name": "paper"},
        "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
    }


def _refusal(submit: Any) -> dict[str, Any]:
    with pytest.raises(ValidationFailed) as refused:
        submit()
    return refused.value.problem


def test_owner_b_reaches_nothing_of_as_dataset_and_a_trains_on_it(
    stack: Any, worker: Any, owners: dict[str, tuple[int, str]], tmp_path: Path
) -> None:
    path = dataset_file(tmp_path)
    with client(stack, owners, "owner-a") as alice, client(stack, owners, "owner-b") as bob:
        dataset = alice.upload_dataset(path)
        assert dataset.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert sorted(dataset.modalities) == ["secretaudio", "secretimage"]
        key = stored_key(stack, dataset.id)
        stored = f"s3://{stack.bucket}/mmkd/{key}"
        with pytest.raises(NotFound) as got:
            bob.dataset(dataset.id)
        with pytest.raises(NotFound) as deleted:
            bob.delete_dataset(dataset.id)
        with pytest.raises(NotFound) as missing:
            bob.dataset(dataset.id + 1000)
        assert got.value.detail == deleted.value.detail == f"no dataset {dataset.id}"
        assert missing.value.detail == f"no dataset {dataset.id + 1000}"
        assert list(bob.datasets()) == []
        by_id = [_refusal(lambda i=i: bob.submit(spec_on({"id": i}))) for i in (dataset.id, dataset.id + 1000)]
        assert [p["errors"] for p in by_id] == [[{"path": "dataset.id", "message": NO_SUCH_DATASET}]] * 2
        local = stack.home / "worker-local.npz"
        local.write_bytes(path.read_bytes())
        raw = [stored, f"s3://{stack.bucket}/mmkd/datasets/{owners['owner-a'][0]}/999999.npz", str(local)]
        by_uri = [_refusal(lambda u=u: bob.submit(spec_on({"uri": u}))) for u in raw]
        assert [p["errors"] for p in by_uri] == [[{"path": "dataset.uri", "message": URI_NOT_ALLOWED}]] * 3
        for problem in by_id + by_uri:  # no modality names, sizes, checksums or keys of A's
            text = str(problem)
            assert not any(s in text for s in ("secret", str(dataset.size_bytes), dataset.sha256, key))

        job = alice.wait(alice.submit(spec_on({"id": dataset.id})).id, timeout=120)
        assert job.status == "succeeded" and set(job.result) >= {"student", "teacher", "auxiliary"}
        alice.delete_dataset(dataset.id)
        assert list(alice.datasets()) == []


def _insert_job(stack: Any, owner_id: int, spec: dict[str, Any]) -> int:
    """A queued job written straight to the database (bypassing the API's checks), then published."""
    with stack.sessions() as session:
        job = Job(owner_id=owner_id, name=spec["name"], spec=spec, spec_hash="0" * 64, seed=0, max_attempts=1)
        session.add(job)
        session.commit()
        job_id = job.id
    publish_again(stack, job_id)
    return job_id


def _failure(stack: Any, job_id: int) -> Job:
    return stack.wait_for(lambda: job_row(stack, job_id).status == "failed" and job_row(stack, job_id), what="failed")


def test_specs_that_bypass_the_api_fail_in_the_worker_with_one_message(
    stack: Any, worker: Any, owners: dict[str, tuple[int, str]], tmp_path: Path
) -> None:
    path = dataset_file(tmp_path)
    alice_id, bob_id = owners["owner-a"][0], owners["owner-b"][0]
    with client(stack, owners, "owner-a") as alice:
        kept = alice.upload_dataset(path, multipart=True)  # through presigned parts to S3
        dropped = alice.upload_dataset(path)
        alice.delete_dataset(dropped.id)
    local = stack.home / "worker-local.npz"
    local.write_bytes(path.read_bytes())
    uris = [
        f"s3://{stack.bucket}/mmkd/{stored_key(stack, kept.id)}",  # exists
        f"s3://{stack.bucket}/mmkd/datasets/{alice_id}/999999.npz",  # does not
        str(local),  # a file on the worker's disk
    ]
    by_uri = [_failure(stack, _insert_job(stack, bob_id, spec_on({"uri": uri}))) for uri in uris]
    assert [(job.error, job.status_reason) for job in by_uri] == [("invalid_data", f"{u}: {NOT_ALLOWED}") for u in uris]
    refs = [(bob_id, kept.id), (bob_id, 999999), (alice_id, dropped.id)]  # A's, nobody's, deleted since
    by_id = [_failure(stack, _insert_job(stack, owner, spec_on({"id": ref}))) for owner, ref in refs]
    expected = [("invalid_data", f"dataset:{ref}: {NO_DATASET}") for _, ref in refs]
    assert [(job.error, job.status_reason) for job in by_id] == expected
