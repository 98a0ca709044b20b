"""The SDK against a live uvicorn server (PostgreSQL, Redis, local artifact store)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mmkd_client import (
    AuthError,
    Client,
    Conflict,
    JobCancelled,
    JobFailed,
    NotFound,
    RateLimited,
    ValidationFailed,
    WaitTimeout,
)
from mmkd_client.spec_file import read_spec_file
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from tests_support import add_metric_points

from core.errors import SpecError
from core.spec import load_spec
from core.spec_yaml import parse_spec_mapping
from jobs import lifecycle
from jobs.models import Job
from service.jobs.results import RESULT_EXAMPLE

ROOT = Path(__file__).resolve().parents[2]
SPEC: dict[str, Any] = {
    "name": "sdk-test",
    "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["pix"]},
    "method": {"name": "logit_kd"},
}


@pytest.fixture
def client(api_server: Any) -> Iterator[Client]:
    """A client for a fresh owner."""
    with Client(api_server.url, api_server.new_key(), backoff=0.01) as sdk:
        yield sdk


@pytest.fixture
def db(api_server: Any) -> Iterator[Session]:
    """A session on the server's database, to play the worker's part."""
    engine = create_engine(api_server.database_url)
    with Session(engine, expire_on_commit=False) as session:
        yield session
    engine.dispose()


def _advance(db: Session, job_id: int, *statuses: str, **fields: Any) -> None:
    job = db.get(Job, job_id, populate_existing=True)
    assert job is not None
    for name, value in fields.items():
        setattr(job, name, value)
    for status in statuses:
        lifecycle.transition(db, job_id=job.id, to=status, reason=f"test: {status}")
    db.commit()


def test_submit_in_three_shapes_get_and_list(client: Client) -> None:
    from_dict = client.submit(SPEC)
    from_file = client.submit(ROOT / "examples" / "mfeat-paper.yaml")
    from_model = client.submit(load_spec(ROOT / "examples" / "mfeat-paper.yaml"))
    assert from_dict.status == "queued" and from_dict.spec["method"]["kd_weight"] == 1.0
    assert from_file.spec_hash == from_model.spec_hash
    assert client.get(from_file.id).name == "mfeat-paper"
    listed = [job.id for job in client.list(page_size=2)]
    assert listed == [from_model.id, from_file.id, from_dict.id]
    assert [job.id for job in client.list(status="cancelled")] == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"name": "a", "name": "b"}', "duplicate key 'name'"),
        ("name: a\ntrain:\n  epochs: 1\n  epochs: 2\n", "duplicate key 'epochs' at line 4"),
        ("base: &b {epochs: 1}\ntrain: *b\n", "aliases are not allowed"),
        ("name: [unclosed\n", "not a valid YAML spec"),
    ],
)
def test_a_spec_file_that_means_two_things_is_refused_before_sending(
    client: Client, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    before = [job.id for job in client.list()]
    with pytest.raises(ValueError, match=message) as refused:
        client.submit(path)
    assert str(refused.value).startswith(str(path))
    assert [job.id for job in client.list()] == before


SHARED_GOOD = "name: t\ndataset: {name: mfeat, primary: [fou], auxiliary: [pix]}\nmethod: {name: logit_kd}\n"


@pytest.mark.parametrize(
    "text",
    [
        SHARED_GOOD + "train: {lr: 1e-3, weight_decay: 5E-4, amp: yes, seed: +1}\nmodel: {dropout: .5}\n",
        SHARED_GOOD.replace("name: t", "name: 2024-01-01"),
        SHARED_GOOD.replace("name: t", "name: 2024-01-01 10:00:00"),
        SHARED_GOOD.replace("name: t", "name: !!str 5") + "train: {epochs: !!int 7, lr: -.5}\n",
        SHARED_GOOD.replace("name: t", 'name: "010"') + "<<: ~\n",
        '{"name": "\\ud83d\\ude00", "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["pix"]}, '
        '"method": {"name": "logit_kd"}, "train": {"lr": 1e-3}}',
        '{"name": NaN}',
    ],
)
def test_the_sdk_reads_a_spec_file_as_the_server_does(tmp_path: Path, text: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert read_spec_file(path) == parse_spec_mapping(text, "spec.yaml")


@pytest.mark.parametrize(
    "text",
    [
        SHARED_GOOD + "x: !!binary aGk=\n",
        SHARED_GOOD + "x: !!timestamp 2024-01-01\n",
        SHARED_GOOD + "x: !!set {a: null}\n",
        SHARED_GOOD + "? [a]\n: 1\n",
        SHARED_GOOD + "null: 1\n",
        "a: " + "[" * 40 + "]" * 40 + "\n",
        "a: " + "[" * 5000 + "]" * 5000 + "\n",
        '{"a": ' * 40 + "1" + "}" * 40,
        SHARED_GOOD + "train: {epochs: 010}\n",
        SHARED_GOOD + "train: {epochs: 0x10}\n",
        SHARED_GOOD + "train: {epochs: 1:30}\n",
        SHARED_GOOD + "train: {epochs: 1_0}\n",
        SHARED_GOOD + "train: {epochs: " + "9" * 5000 + "}\n",
        SHARED_GOOD + "train: {lr: .inf}\n",
        SHARED_GOOD + "train: {lr: 1e999}\n",
        '{"a": 1e999}',
        SHARED_GOOD + "---\n" + SHARED_GOOD,
    ],
)
def test_the_sdk_refuses_what_the_server_refuses_with_one_value_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError):
        parse_spec_mapping(text, "spec.yaml")
    with pytest.raises(ValueError) as refused:
        read_spec_file(path)
    assert type(refused.value) is ValueError and str(refused.value).startswith(f"{path}: ")
    assert len(str(refused.value).splitlines()) == 1


def test_a_spec_file_mmkd_train_accepts_is_submitted_as_written(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SHARED_GOOD.replace("name: t", "name: 2024-01-01") + "train: {lr: 1e-3}\n")
    job = client.submit(path)
    assert job.spec["name"] == "2024-01-01" and job.spec["train"]["lr"] == 0.001
    assert job.spec_hash == load_spec(path).spec_hash()


def test_errors_map_to_exceptions(client: Client, api_server: Any) -> None:
    with pytest.raises(ValidationFailed) as invalid:
        client.submit({**SPEC, "dataset": {**SPEC["dataset"], "primary": []}})
    assert invalid.value.paths == ["dataset.primary"]
    with pytest.raises(NotFound):
        client.get(10**9)
    client.submit(SPEC, idempotency_key="k")
    with pytest.raises(Conflict):
        client.submit({**SPEC, "name": "other"}, idempotency_key="k")
    with Client(api_server.url, "mmkd_bad_key") as stranger, pytest.raises(AuthError):
        stranger.get(1)


def test_wait_returns_result_and_raises_on_failure_or_cancel(client: Client, db: Session) -> None:
    job = client.submit(SPEC)

    def finish() -> None:
        time.sleep(0.3)
        _advance(db, job.id, "running", "succeeded", result=RESULT_EXAMPLE)

    worker = threading.Thread(target=finish)
    worker.start()
    done = client.wait(job.id, timeout=20, )
    worker.join()
    assert done.status == "succeeded" and done.result == RESULT_EXAMPLE

    failing = client.submit(SPEC)
    _advance(db, failing.id, "running", "failed", error="non-finite loss at step 7")
    with pytest.raises(JobFailed, match="non-finite loss at step 7"):
        client.wait(failing.id, timeout=5)

    cancelled = client.cancel(client.submit(SPEC).id)
    assert cancelled.status == "cancelled"
    with pytest.raises(JobCancelled):
        client.wait(cancelled.id, timeout=5)
    with pytest.raises(WaitTimeout):
        client.wait(client.submit(SPEC).id, timeout=0.3, )


def test_events_metrics_artifacts_download(client: Client, db: Session, api_server: Any, tmp_path: Path) -> None:
    job = client.submit(SPEC)
    row = db.get(Job, job.id)
    assert row is not None
    lifecycle.transition(db, job_id=row.id, to="running")
    add_metric_points(db, job_id=row.id, step=1, epoch=0, values={"train/loss": 2.0, "val/acc": 0.4})
    add_metric_points(db, job_id=row.id, step=2, epoch=1, values={"train/loss": 1.0, "val/acc": 0.6})
    key = f"jobs/{job.id}/student/model.bin"
    stored = api_server.storage_root / key
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"weights" * 1000)
    lifecycle.record_artifact(db, job_id=job.id, key=key, kind="student", size_bytes=7000, checksum=None)
    db.commit()
    assert [e.kind for e in client.events(job.id)] == ["created", "enqueued", "started"]
    assert [(p.step, p.value) for p in client.metrics(job.id, names=["val/acc"], since_step=2)] == [(2, 0.6)]
    assert len(client.metrics(job.id)) == 4
    artifacts = client.artifacts(job.id)
    assert [a.key for a in artifacts] == [key]
    path = client.download(job.id, key, tmp_path)
    assert path == tmp_path / "model.bin" and path.read_bytes() == b"weights" * 1000
    assert client.download(job.id, artifacts[0].id, tmp_path / "copy.bin").stat().st_size == 7000
    assert client.download(job.id, artifacts[0], f"{tmp_path}/new/") == tmp_path / "new" / "model.bin"


class LostResponses(httpx.BaseTransport):
    """Forwards every request to the server, but answers the first ``lose`` with a 502 (a proxy that
    lost the response after the server acted)."""

    def __init__(self, lose: int) -> None:
        self.real = httpx.HTTPTransport()
        self.lose = lose
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        response = self.real.handle_request(request)
        if self.calls <= self.lose:
            response.read()
            return httpx.Response(502, text="bad gateway")
        return response


def test_retried_submit_never_creates_a_second_job(api_server: Any) -> None:
    transport = LostResponses(lose=2)
    with Client(api_server.url, api_server.new_key(), transport=transport, backoff=0.01) as sdk:
        job = sdk.submit(SPEC)
        assert transport.calls == 3
        assert [j.id for j in sdk.list()] == [job.id]


def test_connection_errors_are_retried_then_raised() -> None:
    calls = 0

    def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"items": [], "next_cursor": None})

    with Client("http://mmkd.invalid", "k", transport=httpx.MockTransport(refuse), backoff=0.01) as sdk:
        assert list(sdk.list()) == []
    assert calls == 3


def test_bad_base_url_fails_at_once() -> None:
    with pytest.raises(ValueError, match="http://"):
        Client("localhost:8000", "k")


def test_sdk_imports_without_torch_or_server_stack() -> None:
    check = (
        "import sys, mmkd_client; "
        "loaded = {m.split('.')[0] for m in sys.modules}; "
        "bad = {'torch', 'fastapi', 'sqlalchemy', 'celery', 'numpy'} & loaded; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd="/", timeout=60)
    assert result.returncode == 0, result.stderr


def test_unique_owner_sees_only_own_jobs(api_server: Any) -> None:
    owner = f"iso-{uuid.uuid4().hex[:6]}"
    with (
        Client(api_server.url, api_server.new_key(owner)) as mine,
        Client(api_server.url, api_server.new_key()) as other,
    ):
        job = mine.submit(SPEC)
        with pytest.raises(NotFound):
            other.get(job.id)
        assert job.owner == owner


def test_list_pages_stay_correct_while_another_client_submits(api_server: Any) -> None:
    token = api_server.new_key()
    with Client(api_server.url, token) as sdk, Client(api_server.url, token) as writer:
        before = [sdk.submit(SPEC).id for _ in range(12)]
        stop = threading.Event()
        added: list[int] = []

        def keep_submitting() -> None:
            while not stop.is_set() and len(added) < 40:
                added.append(writer.submit(SPEC).id)

        thread = threading.Thread(target=keep_submitting)
        thread.start()
        try:
            pages = []
            for job in sdk.list(page_size=3):
                pages.append(job.id)
                time.sleep(0.01)  # give the writer time between pages
        finally:
            stop.set()
            thread.join()
    assert len(pages) == len(set(pages))  # no job twice
    assert set(before) <= set(pages)  # every job that existed when listing began
    assert pages == sorted(pages, reverse=True)  # newest first throughout
    assert added  # the writer really ran concurrently


def test_retry_after_is_honoured_and_a_429_is_raised_with_its_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    """503 with Retry-After waits what the server says (capped), not the backoff; 429 is not retried."""
    slept: list[float] = []
    monkeypatch.setattr("mmkd_client.client.time.sleep", slept.append)
    answers = [
        httpx.Response(503, headers={"Retry-After": "2"}, json={"detail": "busy"}),
        httpx.Response(503, headers={"Retry-After": "600"}, json={"detail": "busy"}),
        httpx.Response(200, json={"owner": "a", "auth": True}),
    ]
    with Client("http://mmkd.test", "k", transport=httpx.MockTransport(lambda _: answers.pop(0)), backoff=5) as sdk:
        assert sdk._request("GET", "/v1/whoami").status_code == 200
    assert slept == [2.0, 30.0]

    limited = httpx.Response(429, headers={"Retry-After": "30"}, json={"detail": "at most 1000 queued jobs"})
    calls: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return limited

    with (
        Client("http://mmkd.test", "k", transport=httpx.MockTransport(refuse)) as sdk,
        pytest.raises(RateLimited) as caught,
    ):
        sdk.submit(SPEC)
    assert len(calls) == 1 and caught.value.retry_after == 30.0 and "1000 queued" in str(caught.value)
