"""``Client``: submit, inspect, wait for and download mmkd jobs over HTTP; upload, list and delete
datasets; create, follow and cancel studies (searches whose trials are jobs).

Connection errors and 502/503/504 answers are retried with exponential backoff, or after the
server's ``Retry-After`` (up to 30 s) when it sends one; a 429 (an owner's limit) is raised at once
as ``RateLimited`` with the server's ``retry_after``. Every submit
and study create carries an ``Idempotency-Key`` (generated when the caller gives none), so a retried
one returns the job or study the first attempt created instead of creating a second one. Dataset files are streamed
from disk, never read whole into memory.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from mmkd_client.errors import (
    Conflict,
    ConnectionFailed,
    JobCancelled,
    JobFailed,
    MmkdError,
    NotFound,
    StudyCancelled,
    StudyFailed,
    WaitTimeout,
    error_for,
)
from mmkd_client.models import (
    Artifact,
    Dataset,
    Event,
    Job,
    JobSummary,
    LogLine,
    MetricPoint,
    Study,
    StudySummary,
    Trial,
)
from mmkd_client.spec_file import read_spec_file
from mmkd_client.stream import StreamEvent, parse_events

#: Files larger than this go through the presigned multipart flow when the server has S3.
MULTIPART_THRESHOLD = 64 << 20
COMPLETE_TIMEOUT = 900.0  # seconds a completion may take: a folder's checks read a few ranges of every file
_CHUNK = 1 << 20
RETRY_STATUSES = frozenset({502, 503, 504})
MAX_RETRY_AFTER = 30.0  # seconds: a Retry-After above this is honoured only up to it
RETRY_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
SpecLike = Mapping[str, Any] | BaseModel | str | Path


class Client:
    """A connection to one mmkd server, acting for the owner of ``api_key``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, got {base_url!r}")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff = retries, backoff
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, **kwargs)
            except RETRY_ERRORS as exc:
                if last:
                    raise ConnectionFailed(f"cannot reach {self.base_url}: {exc}") from exc
            except httpx.TransportError as exc:  # a bad URL or protocol: retrying cannot help
                raise ConnectionFailed(f"cannot reach {self.base_url}: {exc}") from exc
            else:
                if response.status_code not in RETRY_STATUSES or last:
                    break
                advised = _retry_after(response)
                if advised is not None:  # the server said when (503 while its pool or admission is full)
                    time.sleep(min(advised, MAX_RETRY_AFTER))
                    continue
            time.sleep(self.backoff * 2**attempt)
        if response.is_error:
            body = _body(response)
            advised = _retry_after(response)
            if isinstance(body, dict) and advised is not None:
                body = {**body, "retry_after": advised}
            raise error_for(response.status_code, body)
        return response

    def submit(self, spec: SpecLike, idempotency_key: str | None = None) -> Job:
        """Submit a spec (a mapping, a pydantic model, or a YAML/JSON file path); returns the queued job."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        response = self._request("POST", "/v1/jobs", json=_spec_dict(spec), headers=headers)
        return Job.model_validate(response.json())

    def get(self, job_id: int) -> Job:
        """One job."""
        return Job.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def list(self, status: str | list[str] | None = None, page_size: int = 100) -> Iterator[JobSummary]:
        """Every job of this owner, newest first, following the cursor page by page."""
        params: dict[str, Any] = {"limit": page_size}
        if status:
            params["status"] = [status] if isinstance(status, str) else status
        while True:
            page = self._request("GET", "/v1/jobs", params=params).json()
            yield from (JobSummary.model_validate(item) for item in page["items"])
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    def cancel(self, job_id: int) -> Job:
        """Cancel: a queued job at once, a running one once its worker stops (status ``cancelling``)."""
        return Job.model_validate(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def events(self, job_id: int) -> builtins.list[Event]:
        """State transitions and notable moments, oldest first."""
        items = self._request("GET", f"/v1/jobs/{job_id}/events").json()["items"]
        return [Event.model_validate(item) for item in items]

    def metrics(
        self, job_id: int, names: builtins.list[str] | None = None, since_step: int | None = None
    ) -> builtins.list[MetricPoint]:
        """Metric points ordered by step, optionally some series only and from a step on."""
        params: dict[str, Any] = {}
        if names:
            params["names"] = names
        if since_step is not None:
            params["since_step"] = since_step
        items = self._request("GET", f"/v1/jobs/{job_id}/metrics", params=params).json()["items"]
        return [MetricPoint.model_validate(item) for item in items]

    def artifacts(self, job_id: int) -> builtins.list[Artifact]:
        """The job's artifacts with their download URLs."""
        items = self._request("GET", f"/v1/jobs/{job_id}/artifacts").json()["items"]
        return [Artifact.model_validate(item) for item in items]

    def wait(
        self,
        job_id: int,
        timeout: float | None = None,
        *,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Follow the job's live stream until it ends; return it if it succeeded, or if it was
        ``pruned`` (a study's trial its pruner stopped early: a normal end of a trial, with no
        ``result``; check ``job.status``).

        Raises :class:`JobFailed` or :class:`JobCancelled` with the reason, or :class:`WaitTimeout`.
        ``on_update`` sees every state the stream sends; by default nothing is shown.
        """
        for event in self.watch(job_id, timeout=timeout):
            if event.job is not None and on_update is not None:
                on_update(event.job)
        job = self.get(job_id)
        if job.status == "failed":
            raise JobFailed(job)
        if job.status == "cancelled":
            raise JobCancelled(job)
        return job

    def watch(self, job_id: int, timeout: float | None = None) -> Iterator[StreamEvent]:
        """The job live, as server-sent events (``job``, ``metrics``, ``event``, ``log``), until it
        ends (the ``end`` event is the last). A dropped connection is resumed after the last event
        seen (``Last-Event-ID``), so nothing is missed or repeated. :class:`WaitTimeout` after ``timeout``."""
        yield from self._follow(f"/v1/jobs/{job_id}/stream", {}, timeout, f"job {job_id}")

    def logs(self, job_id: int, *, follow: bool = False, attempt: int | None = None) -> Iterator[LogLine]:
        """The job's log lines, oldest first (the server keeps each job's newest lines; an attempt's
        whole log is its ``log`` artifact). ``follow=True`` goes on with new lines until the job ends."""
        params: dict[str, Any] = {} if attempt is None else {"attempt": attempt}
        if follow:
            for event in self._follow(f"/v1/jobs/{job_id}/logs", {**params, "follow": "true"}, None, f"job {job_id}"):
                yield from event.lines
            return
        cursor = None
        while True:
            page = self._request(
                "GET", f"/v1/jobs/{job_id}/logs", params={**params, "cursor": cursor} if cursor else params
            ).json()
            yield from (LogLine.model_validate(item) for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def _follow(self, path: str, params: dict[str, Any], timeout: float | None, what: str) -> Iterator[StreamEvent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        last_id: str | None = None
        failures = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(f"{what} did not end within {timeout}s")
            headers = {"Last-Event-ID": last_id} if last_id else {}
            read = httpx.Timeout(self._http.timeout.connect, read=None if remaining is None else remaining)
            try:
                with self._http.stream("GET", path, params=params, headers=headers, timeout=read) as response:
                    if response.is_error:
                        response.read()
                        raise error_for(response.status_code, _body(response))
                    for event in parse_events(response.iter_lines()):
                        failures = 0
                        last_id = event.id or last_id
                        yield event
                        if event.kind == "end":
                            return
            except httpx.ReadTimeout:
                continue  # the deadline check above decides
            except RETRY_ERRORS as exc:
                failures += 1
                if failures > self.retries:
                    raise ConnectionFailed(f"lost the stream of {what}: {exc}") from exc
                time.sleep(self.backoff * 2 ** (failures - 1))

    def download(self, job_id: int, artifact: Artifact | int | str, dest: str | Path) -> Path:
        """Download an artifact (object, id or key) to ``dest``: a file path, or a folder (existing, or
        ending in ``/``) to put it in under its own name. Returns the file written."""
        chosen = artifact if isinstance(artifact, Artifact) else self._find_artifact(job_id, artifact)
        target = Path(dest)
        if target.is_dir() or str(dest).endswith(("/", os.sep)):
            target = target / chosen.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        # Our own URLs need the key; presigned storage URLs must not carry it.
        ours = chosen.url.startswith(self.base_url)
        http = self._http if ours else httpx.Client(timeout=self._http.timeout, follow_redirects=True)
        try:
            with http.stream("GET", chosen.url, follow_redirects=True) as response:
                if response.is_error:
                    response.read()
                    raise error_for(response.status_code, _body(response))
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        finally:
            if not ours:
                http.close()
        partial.replace(target)
        return target

    def upload_dataset(self, path: str | Path, name: str | None = None, *, multipart: bool | None = None) -> Dataset:
        """Upload an .npz (streamed from disk); the server validates it and returns its summary.

        ``multipart`` None sends files over ``MULTIPART_THRESHOLD`` bytes through presigned part
        URLs when the server stores in S3 (and directly otherwise); True insists on presigned parts.

        A folder is a sharded dataset: its top-level ``.npz`` shards (or one ``.npy`` per array), each
        sent through presigned parts (an S3 server only: :class:`Conflict` otherwise).
        """
        source = Path(path)
        if source.is_dir():
            return self._upload_folder(source, name or _dataset_name(source))
        size = source.stat().st_size
        label = name or _dataset_name(source)
        if multipart or (multipart is None and size > MULTIPART_THRESHOLD):
            try:
                return self._upload_in_parts(source, label, size)
            except Conflict:
                if multipart:
                    raise
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        body = _FileChunks(source)
        response = self._request("POST", "/v1/datasets", params={"name": label}, content=body, headers=headers)
        return Dataset.model_validate(response.json())

    def _upload_in_parts(self, source: Path, name: str, size: int) -> Dataset:
        plan = self._request("POST", "/v1/datasets/uploads", json={"name": name, "size_bytes": size}).json()
        return self._send_parts(
            plan, lambda: {"parts": _put_parts(plan["parts"], source, plan["part_size"], self._http.timeout)}
        )

    def _upload_folder(self, folder: Path, name: str) -> Dataset:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".npz", ".npy"))
        if not files:
            raise MmkdError(f"{folder}: holds no .npz shards and no .npy arrays")
        wanted = [{"name": p.name, "size_bytes": p.stat().st_size} for p in files]
        plan = self._request("POST", "/v1/datasets/uploads", json={"name": name, "files": wanted}).json()

        local = {path.name: path for path in files}  # only the files asked for are read, whatever the plan says

        def send() -> dict[str, Any]:
            sent = []
            for entry in plan["files"]:
                if entry["name"] not in local:
                    raise MmkdError(f"the server asked for {entry['name']!r}, which is not one of the files sent")
                parts = _put_parts(entry["parts"], local[entry["name"]], plan["part_size"], self._http.timeout)
                sent.append({"name": entry["name"], "parts": parts})
            return {"files": sent}

        return self._send_parts(plan, send)

    def _send_parts(self, plan: dict[str, Any], send: Callable[[], dict[str, Any]]) -> Dataset:
        """PUT the parts (``send`` returns the completion's body), then complete; abort on failure."""
        try:  # the server checks what it assembled before it answers: give it time (COMPLETE_TIMEOUT)
            body = send()
            waiting = httpx.Timeout(COMPLETE_TIMEOUT, connect=self._http.timeout.connect)
            done = self._request("POST", plan["complete"], json=body, timeout=waiting)
        except (httpx.HTTPError, MmkdError, OSError):
            with contextlib.suppress(MmkdError):
                self._request("DELETE", f"/v1/datasets/uploads/{plan['id']}")
            raise
        return Dataset.model_validate(done.json())

    def datasets(self, page_size: int = 100) -> Iterator[Dataset]:
        """Every dataset of this owner, newest first, following the cursor page by page."""
        params: dict[str, Any] = {"limit": page_size}
        while True:
            page = self._request("GET", "/v1/datasets", params=params).json()
            yield from (Dataset.model_validate(item) for item in page["items"])
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    def dataset(self, dataset_id: int) -> Dataset:
        """One dataset and its summary."""
        return Dataset.model_validate(self._request("GET", f"/v1/datasets/{dataset_id}").json())

    def delete_dataset(self, dataset_id: int) -> None:
        """Delete a dataset (``Conflict`` while queued or running jobs use it)."""
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    def create_study(self, spec: SpecLike, idempotency_key: str | None = None) -> Study:
        """Create a study (a mapping, a pydantic model, or a YAML/JSON file path); returns it running,
        its first trials queued as jobs. The same key with the same spec returns the same study;
        with another spec it is :class:`Conflict`."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        body = _spec_dict(spec, what="study spec")
        return Study.model_validate(self._request("POST", "/v1/studies", json=body, headers=headers).json())

    def study(self, study_id: int) -> Study:
        """One study: status, spec and, once it succeeded, its result."""
        return Study.model_validate(self._request("GET", f"/v1/studies/{study_id}").json())

    def studies(self, status: str | builtins.list[str] | None = None, page_size: int = 100) -> Iterator[StudySummary]:
        """Every study of this owner, newest first, following the cursor page by page."""
        params: dict[str, Any] = {"limit": page_size}
        if status:
            params["status"] = [status] if isinstance(status, str) else status
        while True:
            page = self._request("GET", "/v1/studies", params=params).json()
            yield from (StudySummary.model_validate(item) for item in page["items"])
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    def trials(self, study_id: int) -> builtins.list[Trial]:
        """The study's trials in order, each with its state, values, objective and jobs."""
        items = self._request("GET", f"/v1/studies/{study_id}/trials").json()["items"]
        return [Trial.model_validate(item) for item in items]

    def cancel_study(self, study_id: int) -> Study:
        """Cancel: no more trials; queued trial jobs are cancelled, running ones stop at their next
        step. A study that already ended is :class:`Conflict`."""
        return Study.model_validate(self._request("POST", f"/v1/studies/{study_id}/cancel").json())

    def wait_study(
        self,
        study_id: int,
        timeout: float | None = None,
        *,
        poll: float = 5.0,
        on_update: Callable[[Study], None] | None = None,
    ) -> Study:
        """Poll the study every ``poll`` seconds until it ends; return it if it succeeded.

        Raises :class:`StudyFailed` or :class:`StudyCancelled` with the reason, or :class:`WaitTimeout`
        after ``timeout`` seconds. ``on_update`` sees the study at every poll.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            study = self.study(study_id)
            if on_update is not None:
                on_update(study)
            if study.done:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(f"study {study_id} did not end within {timeout}s")
            time.sleep(poll if remaining is None else min(poll, remaining))
        if study.status == "failed":
            raise StudyFailed(study)
        if study.status == "cancelled":
            raise StudyCancelled(study)
        return study

    def _find_artifact(self, job_id: int, ref: int | str) -> Artifact:
        for item in self.artifacts(job_id):
            if ref in (item.id, item.key):
                return item
        raise NotFound(404, f"job {job_id} has no artifact {ref!r}")


class _FileChunks:
    """A file's bytes in chunks, read afresh on every iteration (so a retried request resends it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[bytes]:
        with self.path.open("rb") as handle:
            while block := handle.read(_CHUNK):
                yield block


def _put_parts(
    parts: list[dict[str, Any]], source: Path, part_size: int, timeout: httpx.Timeout
) -> list[dict[str, Any]]:
    """PUT each part of ``source`` to its presigned URL; the parts' numbers and ETags."""
    done = []
    with httpx.Client(timeout=timeout) as storage, source.open("rb") as handle:
        for part in parts:
            handle.seek((part["part_number"] - 1) * part_size)
            answer = storage.put(part["url"], content=handle.read(part_size))
            if answer.is_error:
                raise error_for(answer.status_code, answer.text)
            done.append({"part_number": part["part_number"], "etag": answer.headers["ETag"]})
    return done


def _dataset_name(path: Path) -> str:
    """The file's name as the server accepts dataset names (letters, digits, ``_.-``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", path.name).lstrip("_.-")[:200]
    return cleaned or "dataset"


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _spec_dict(spec: SpecLike, what: str = "job spec") -> dict[str, Any]:
    if isinstance(spec, BaseModel):
        return spec.model_dump(mode="json")
    if isinstance(spec, Mapping):
        return dict(spec)
    return read_spec_file(spec, what=what)


def _retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (its delta-seconds form), or None."""
    try:
        value = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if value >= 0 else None
