"""Issue 12's table, the data rows, case by case: each broken file is one line naming the file and
what is wrong, the same three ways in: ``mmkd train`` (exit 1, no traceback, no run folder), a job
on the worker (``failed`` with ``invalid_data``, not retried) and an upload (a 422 on the ``file``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cli.main import app
from core.spec import JobSpec
from jobs.keys import get_or_create_owner
from jobs.lifecycle import submit_job
from jobs.migrate import upgrade
from jobs.models import Dataset, Job
from worker import runner
from worker.config import get_worker_settings

N = 60
TINY = {
    "name": "table",
    "model": {"hidden_dim": 8, "repr_dim": 8},
    "method": {"name": "paper"},
    "train": {"epochs": 1, "batch_size": 16, "device": "cpu"},
}


def arrays(**changes: np.ndarray) -> dict[str, np.ndarray]:
    """A valid file's arrays (a vector and a sequence modality, three classes) with ``changes``."""
    rng = np.random.default_rng(0)
    good = {
        "cheap": rng.normal(size=(N, 5)).astype(np.float32),
        "rich": rng.normal(size=(N, 2, 8)).astype(np.float32),
        "label": np.arange(N) % 3,
    }
    return {**good, **changes}


def truncated(path: Path) -> None:
    np.savez_compressed(path, **arrays())
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])


def saved(**changes: np.ndarray) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays(**changes))


#: row of the table -> (how the file is written, what the one line says after the file's name)
ROWS: dict[str, tuple[Callable[[Path], None], str]] = {
    "a truncated .npz": (truncated, "not a valid .npz file (File is not a zip file)"),
    "a 0-d label array": (saved(label=np.array(1)), "array 'label' is 0-d; expected one value per sample"),
    "a modality shaped (N, 0)": (
        saved(cheap=np.zeros((N, 0), np.float32)),
        "modality 'cheap' has shape (60, 0); every sample needs at least one feature",
    ),
    "a sequence shaped (N, C, 0)": (
        saved(rich=np.zeros((N, 2, 0), np.float32)),
        "modality 'rich' has shape (60, 2, 0); every sample needs at least one channel and one step",
    ),
    "one label of 2,000,000,000": (
        saved(label=np.where(np.arange(N) == 7, 2_000_000_000, np.arange(N) % 3)),
        "array 'label' has class id 2000000000; the limit is 10000 classes",
    ),
    "a single-class dataset": (
        saved(label=np.zeros(N, np.int64)),
        "array 'label': the labelled samples hold only class 0; classification needs at least 2 classes",
    ),
}
row_params = pytest.mark.parametrize(("write", "reason"), list(ROWS.values()), ids=list(ROWS))


def spec_on(uri: str) -> dict[str, Any]:
    return {**TINY, "dataset": {"uri": uri, "primary": ["cheap"], "auxiliary": ["rich"]}}


@row_params
def test_mmkd_train_says_one_line_and_writes_nothing(
    tmp_path: Path, write: Callable[[Path], None], reason: str
) -> None:
    data = tmp_path / "data.npz"
    write(data)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_on(str(data))))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(tmp_path / "spec.yaml"), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [f"error: {data}: {reason}"]
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data.npz", "spec.yaml"]  # no run folder


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[sessionmaker[Session]]:
    """The worker's embedded settings (SQLite, local store) in a temporary home, data allowed under it."""
    monkeypatch.setenv("MMKD_HOME", str(tmp_path))
    monkeypatch.setenv("MMKD_DATA_ALLOW", str(tmp_path / "data"))
    get_worker_settings.cache_clear()
    upgrade(get_worker_settings().resolved_database_url)
    engine = create_engine(get_worker_settings().resolved_database_url)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()
    get_worker_settings.cache_clear()


def run_on(sessions: sessionmaker[Session], spec: dict[str, Any]) -> Job:
    """Submit ``spec`` as the API does, run it in-process, return the job as it ended."""
    with sessions() as session:
        owner = get_or_create_owner(session, name="local")
        session.commit()
        job, _ = submit_job(
            session, owner_id=owner.id, spec=JobSpec.model_validate(spec), idempotency_key=None, max_attempts=3
        )
    runner.run_job(job.id)
    with sessions() as session:
        ended = session.get(Job, job.id)
    assert ended is not None
    return ended


@row_params
def test_a_job_on_the_file_fails_as_invalid_data(
    embedded: sessionmaker[Session], tmp_path: Path, write: Callable[[Path], None], reason: str
) -> None:
    data = tmp_path / "data" / "broken.npz"
    data.parent.mkdir()
    write(data)
    job = run_on(embedded, spec_on(str(data)))
    assert (job.status, job.error, job.attempts) == ("failed", "invalid_data", 1)
    assert job.status_reason == f"{data}: {reason}"


def test_a_truncated_upload_read_back_by_the_worker_fails_as_invalid_data(
    embedded: sessionmaker[Session], tmp_path: Path
) -> None:
    """The worker's own read path for ``dataset:<id>``: a stored object that no longer parses (stored by
    an older, laxer server) fails the job as bad data, not as an internal error."""
    truncated(tmp_path / "upload.npz")
    payload = (tmp_path / "upload.npz").read_bytes()
    with embedded() as session:
        owner = get_or_create_owner(session, name="local")
        session.flush()
        dataset = Dataset(
            owner_id=owner.id,
            name="old",
            key=f"datasets/{owner.id}/old.npz",
            size_bytes=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
            n_samples=N,
            summary={"modalities": {}, "label": None, "splits": None},
        )
        session.add(dataset)
        session.commit()
    store_root = Path(get_worker_settings().resolved_storage_url.removeprefix("file://"))
    (store_root / dataset.key).parent.mkdir(parents=True, exist_ok=True)
    (store_root / dataset.key).write_bytes(payload)
    spec = {**TINY, "dataset": {"id": dataset.id, "primary": ["cheap"], "auxiliary": ["rich"]}}
    job = run_on(embedded, spec)
    assert (job.status, job.error) == ("failed", "invalid_data")
    assert job.status_reason == f"dataset:{dataset.id}: {ROWS['a truncated .npz'][1]}"


@row_params
def test_an_upload_of_the_file_is_a_422_naming_the_problem(
    api_server: Any, tmp_path: Path, write: Callable[[Path], None], reason: str
) -> None:
    write(tmp_path / "data.npz")
    response = httpx.post(
        f"{api_server.url}/v1/datasets",
        params={"name": "broken"},
        content=(tmp_path / "data.npz").read_bytes(),
        headers={"Authorization": f"Bearer {api_server.new_key()}", "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [{"path": "file", "message": f"the uploaded file: {reason}"}]
