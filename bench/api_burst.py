"""Burst: many concurrent submits with one Idempotency-Key plus some with keys of their own, all sent
at the same moment to ``mmkd serve --workers N`` on PostgreSQL and Redis (issue 7).

Every request is followed to its end: a 503 or 429 with ``Retry-After`` is retried after that long,
as a well-behaved client does; anything else is final. Meanwhile a prober asks ``/healthz`` every
20 ms on a new connection each time (so both server processes are probed). Afterwards the database
says how many jobs exist and which lack their ``enqueued`` event. Bounded: each attempt times out
after ``--request-timeout`` seconds, a request gives up after ``--attempts``, and the whole burst
after ``--deadline`` seconds.

    .venv/bin/python -m bench.api_load --burst --write-doc
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import os
import statistics
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

import aiohttp

SPEC = {
    "name": "burst",
    "dataset": {"name": "mfeat", "primary": ["fou", "zer", "mor"], "auxiliary": ["fac", "pix", "kar"]},
    "method": {"name": "paper"},
}
PROBE_EVERY_SECONDS = 0.02
PROBE_TIMEOUT_SECONDS = 5.0


@dataclass
class Submit:
    """One request followed to its end: every status it saw, its final answer and how long it took."""

    statuses: list[int | str] = field(default_factory=list)
    job_id: int | None = None
    seconds: float = 0.0

    @property
    def final(self) -> int | str:
        """The last answer (an HTTP status, or ``timeout`` / an exception name)."""
        return self.statuses[-1] if self.statuses else "not sent"


@dataclass
class BurstResult:
    """What the burst measured."""

    same: int
    distinct: int
    workers: int
    submits: list[Submit]
    probes: list[float | None]  # seconds, None for a probe that got no 200 in time
    seconds: float
    jobs: int
    jobs_without_enqueued: list[int]
    server_errors_logged: int
    load_before: float  # the machine's 1-minute load average just before the burst

    @property
    def finals(self) -> Counter[int | str]:
        """Final answers by status."""
        return Counter(submit.final for submit in self.submits)

    @property
    def retried(self) -> Counter[int | str]:
        """Answers that were retried (503/429), by status."""
        return Counter(status for submit in self.submits for status in submit.statuses[:-1])


async def _submit(http: aiohttp.ClientSession, headers: dict[str, str], *, attempts: int, timeout: float) -> Submit:
    submit = Submit()
    start = time.perf_counter()
    for _ in range(attempts):
        try:
            async with http.post("/v1/jobs", json=SPEC, headers=headers, timeout=aiohttp.ClientTimeout(timeout)) as r:
                body = await r.json(content_type=None)
                submit.statuses.append(r.status)
                retry_after = r.headers.get("Retry-After")
        except TimeoutError:
            submit.statuses.append("timeout")
            break
        except aiohttp.ClientError as exc:
            submit.statuses.append(type(exc).__name__)
            break
        if submit.statuses[-1] in (429, 503) and retry_after is not None:
            await asyncio.sleep(float(retry_after))
            continue
        if submit.statuses[-1] in (200, 201):
            submit.job_id = body["id"]
        break
    submit.seconds = time.perf_counter() - start
    return submit


def _probe(port: int, stop: Event, out: Connection) -> None:
    """In a process of its own (so the load generator's busy loop does not delay it): ``/healthz``
    every 20 ms, each on a new connection; sends back the latency of each (None: no 200 in time)."""
    latencies: list[float | None] = []
    while not stop.is_set():
        start = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_SECONDS)
        try:
            connection.request("GET", "/healthz")
            ok = connection.getresponse().status == 200
            latencies.append(time.perf_counter() - start if ok else None)
        except OSError:
            latencies.append(None)
        finally:
            connection.close()
        stop.wait(PROBE_EVERY_SECONDS)
    out.send(latencies)


async def send_burst(port: int, token: str, args: argparse.Namespace) -> tuple[list[Submit], float]:
    """All submits at once; returns each one's outcome and the wall time of the whole burst."""
    auth = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=0)  # one connection per request, all at once
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as session:
        calls = [{**auth, "Idempotency-Key": "burst-one-key"} for _ in range(args.same)]
        calls += [{**auth, "Idempotency-Key": uuid.uuid4().hex} for _ in range(args.distinct)]
        start = time.perf_counter()
        tasks = [_submit(session, headers, attempts=args.attempts, timeout=args.request_timeout) for headers in calls]
        submits = await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.deadline)
        return submits, time.perf_counter() - start


def probed_burst(port: int, token: str, args: argparse.Namespace) -> tuple[list[Submit], list[float | None], float]:
    """The burst, with the ``/healthz`` prober running from before the first submit until after the last."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    receive, send = context.Pipe(duplex=False)
    prober = context.Process(target=_probe, args=(port, stop, send), daemon=True)
    prober.start()
    try:
        time.sleep(1.0)  # a few probes before the burst: the quiet baseline
        submits, seconds = asyncio.run(send_burst(port, token, args))
        time.sleep(0.5)  # and a few after it
    finally:
        stop.set()
    probes: list[float | None] = receive.recv() if receive.poll(30) else []
    prober.join(10)
    return submits, probes, seconds


def check_database(database_url: str) -> tuple[int, list[int]]:
    """How many jobs exist, and the ids of those without an ``enqueued`` event."""
    from sqlalchemy import create_engine, exists, func, select

    from jobs.models import Job, JobEvent

    engine = create_engine(database_url)
    with engine.connect() as connection:
        jobs = connection.scalar(select(func.count()).select_from(Job))
        enqueued = exists().where(JobEvent.job_id == Job.id, JobEvent.kind == "enqueued")
        missing = list(connection.scalars(select(Job.id).where(~enqueued).order_by(Job.id)))
    engine.dispose()
    return int(jobs or 0), missing


def run_burst(args: argparse.Namespace, home: Path) -> BurstResult:
    """Start ``mmkd serve`` on a fresh database, send the burst, check the database."""
    from bench.api_load import BIN, REDIS, database, free_port, mmkd_env, server

    with database("mmkd_burst") as db_url:
        env = mmkd_env(db_url, home)
        subprocess.run([str(BIN / "mmkd"), "db", "upgrade"], env=env, check=True, capture_output=True)
        created = subprocess.run(
            [str(BIN / "mmkd"), "keys", "create", "--owner", "burst"], env=env, check=True, capture_output=True
        )
        token = created.stdout.decode().strip()
        port = free_port()
        command = [str(BIN / "mmkd"), "serve", "--port", str(port), "--workers", str(args.workers), "--no-migrate"]
        url = f"http://127.0.0.1:{port}"
        log = home / "mmkd-burst.log"
        load_before = os.getloadavg()[0]
        try:
            with server(command, env, url, "/healthz", log):
                submits, probes, seconds = probed_burst(port, token, args)
        finally:
            import redis

            redis.Redis.from_url(REDIS).delete("gpu")  # nobody consumes the bench's train messages
        jobs, missing = check_database(db_url)
    errors = sum(" 500 " in line or "Traceback" in line for line in log.read_text(errors="replace").splitlines())
    return BurstResult(
        same=args.same,
        distinct=args.distinct,
        workers=args.workers,
        submits=submits,
        probes=probes,
        seconds=seconds,
        jobs=jobs,
        jobs_without_enqueued=missing,
        server_errors_logged=errors,
        load_before=load_before,
    )


def burst_report(result: BurstResult, command: str, machine: str) -> str:
    """The ``## API burst`` section of docs/performance.md."""
    answered = [p for p in result.probes if p is not None]
    latencies = sorted(s.seconds for s in result.submits)
    expected_jobs = result.distinct + 1
    ok = sum(n for status, n in result.finals.items() if status in (200, 201))
    lines = [
        "## API burst",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine}, all on loopback: "
        f"`mmkd serve --workers {result.workers}` (default settings: 16 handler threads and a pool of 10 + 10 "
        "connections per process, pool timeout 3 s), PostgreSQL, Redis and the load generator (one asyncio "
        f"process, aiohttp, one connection per request) share the cores. {result.same} submits with one "
        f"Idempotency-Key and {result.distinct} with keys of their own are sent at the same moment; a 503 or "
        "429 with `Retry-After` is retried after that long; `/healthz` is asked every 20 ms on a new "
        "connection, by a process of its own, from before the first submit until after the last answer. "
        f"The machine's 1-minute load average just before the burst was {result.load_before:.1f} "
        "(other people's tests and jobs share it).",
        "",
        f"Command: `{command}`",
        "",
        "| measure | result | target |",
        "|---|---:|---:|",
        f"| requests ending 200/201 | {ok} of {len(result.submits)} | all |",
        f"| final answers | {_counts(result.finals)} | 200/201 only |",
        f"| answers retried after Retry-After | {_counts(result.retried) or 'none'} | - |",
        f"| jobs created | {result.jobs} | {expected_jobs} |",
        f"| jobs without their `enqueued` event | {len(result.jobs_without_enqueued)} | 0 |",
        f"| 500s or tracebacks in the server log | {result.server_errors_logged} | 0 |",
        f"| burst wall time (first send to last answer) | {result.seconds:.1f} s | - |",
        f"| submit latency p50 / p99 / max | {_ms(latencies, 0.5)} / {_ms(latencies, 0.99)} / "
        f"{_ms(latencies, 1.0)} ms | no timeout |",
        f"| `/healthz` probes answered | {len(answered)} of {len(result.probes)} | all |",
        f"| `/healthz` p50 / p99 / max | {_ms(sorted(answered), 0.5)} / {_ms(sorted(answered), 0.99)} / "
        f"{_ms(sorted(answered), 1.0)} ms | max <= 100 ms |",
        f"| `/healthz` probes over 100 ms | {sum(p > 0.1 for p in answered)} | 0 |",
        "",
    ]
    return "\n".join(lines)


def _counts(counter: Counter[int | str]) -> str:
    return ", ".join(f"{status}: {n}" for status, n in sorted(counter.items(), key=lambda item: str(item[0])))


def _ms(sorted_seconds: list[float], quantile: float) -> str:
    if not sorted_seconds:
        return "-"
    if quantile >= 1.0:
        return f"{sorted_seconds[-1] * 1000:.0f}"
    if quantile == 0.5:
        return f"{statistics.median(sorted_seconds) * 1000:.0f}"
    index = min(len(sorted_seconds) - 1, round(quantile * (len(sorted_seconds) - 1)))
    return f"{sorted_seconds[index] * 1000:.0f}"


def burst_passed(result: BurstResult) -> bool:
    """Whether the issue's done-when holds for this run."""
    answered = [p for p in result.probes if p is not None]
    return (
        set(result.finals) <= {200, 201}
        and result.jobs == result.distinct + 1
        and not result.jobs_without_enqueued
        and len(answered) == len(result.probes)
        and max(answered, default=0.0) <= 0.1
    )
