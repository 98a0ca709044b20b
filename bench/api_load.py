"""API load: mmkd's ``POST /v1/jobs`` and ``GET /v1/jobs/{id}`` against an MLflow tracking server's
``runs/create`` and ``runs/get``, at 1, 16 and 64 concurrent clients on loopback.

Both servers run as a user would run them in production (mmkd: ``mmkd serve --workers N``, uvicorn;
MLflow: ``mlflow server --workers N``), each on a fresh database of the same PostgreSQL server.
Every phase sends a fixed number of requests (bounded), after a short warm-up.

    .venv/bin/python -m bench.api_load --workers 2 --requests 1600 --write-doc

``--burst`` runs the burst scenario instead (``bench/api_burst.py``): 1,000 submits with one
Idempotency-Key plus 200 with keys of their own, all at once, with ``/healthz`` probed throughout.

    .venv/bin/python -m bench.api_load --burst --write-doc
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import httpx

from bench.api_load_report import Phase, report, write_section

PG = os.environ.get("MMKD_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS = os.environ.get("MMKD_BENCH_REDIS", "redis://127.0.0.1:6379/15")
BIN = Path(sys.executable).parent
SPEC = {
    "name": "bench",
    "dataset": {"name": "mfeat", "primary": ["fou", "zer", "mor"], "auxiliary": ["fac", "pix", "kar"]},
    "method": {"name": "paper"},
}
Call = Callable[[aiohttp.ClientSession, int], Awaitable[int]]  # returns the HTTP status


@contextlib.contextmanager
def database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def server(command: list[str], env: dict[str, str], url: str, ready_path: str, log: Path) -> Iterator[None]:
    """Run ``command`` in its own process group until ``url + ready_path`` answers (at most 180 s)."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + ready_path, timeout=2).status_code < 500:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{command[0]} not ready after 180 s; see {log}")
            time.sleep(0.5)
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def run_phase(url: str, headers: dict[str, str], call: Call, *, clients: int, requests: int) -> Phase:
    """``clients`` concurrent loops share ``requests`` calls; latency per call, throughput overall.

    The client is aiohttp with one keep-alive connection per loop: at 64 clients httpx's pool cost
    the load generator several ms of CPU per request, which the servers then had to share.
    """
    per_client = -(-requests // clients)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as http:
        for _ in range(2):  # warm-up: open every connection, fill caches (not measured)
            await asyncio.gather(*(call(http, i) for i in range(max(clients, 16))))

        async def loop(index: int) -> None:
            nonlocal errors
            for i in range(per_client):
                start = time.perf_counter()
                status = await call(http, index * per_client + i)
                latencies.append(time.perf_counter() - start)
                errors += status >= 400

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(loop(index) for index in range(clients)))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    p50, p99 = quantiles[49] * 1e3, quantiles[98] * 1e3
    return Phase("", "", clients, len(latencies), errors, seconds, p50, p99, cpu / len(latencies) * 1e3)


async def bench_target(
    name: str, url: str, headers: dict[str, str], ops: list[tuple[str, Call]], args: argparse.Namespace
) -> list[Phase]:
    """Every operation at every concurrency, in order (creates before reads)."""
    phases = []
    for operation, call in ops:
        for clients in args.clients:
            phase = await run_phase(url, headers, call, clients=clients, requests=args.requests)
            phase.server, phase.operation = name, operation
            print(
                f"{name:6} {operation:26} c={clients:<3} {phase.throughput:8.0f}/s "
                f"p50 {phase.p50_ms:6.1f} ms  p99 {phase.p99_ms:6.1f} ms  errors {phase.errors}",
                flush=True,
            )
            phases.append(phase)
    return phases


def mmkd_ops() -> list[tuple[str, Call]]:
    """Submit jobs (each with its own Idempotency-Key, as the SDK does), then read them back."""
    created: list[int] = []

    async def submit(http: aiohttp.ClientSession, _: int) -> int:
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        async with http.post("/v1/jobs", json=SPEC, headers=headers) as response:
            if response.status == 201:
                created.append((await response.json())["id"])
            return response.status

    async def get(http: aiohttp.ClientSession, i: int) -> int:
        async with http.get(f"/v1/jobs/{created[i % len(created)]}") as response:
            await response.read()
            return response.status

    return [("POST /v1/jobs", submit), ("GET /v1/jobs/{id}", get)]


def mlflow_ops(experiment_id: str) -> list[tuple[str, Call]]:
    """Create runs in one experiment, then read them back."""
    created: list[str] = []

    async def create(http: aiohttp.ClientSession, _: int) -> int:
        body = {"experiment_id": experiment_id, "start_time": int(time.time() * 1000), "run_name": "bench"}
        async with http.post("/api/2.0/mlflow/runs/create", json=body) as response:
            if response.status == 200:
                created.append((await response.json())["run"]["info"]["run_id"])
            return response.status

    async def get(http: aiohttp.ClientSession, i: int) -> int:
        params = {"run_id": created[i % len(created)]}
        async with http.get("/api/2.0/mlflow/runs/get", params=params) as response:
            await response.read()
            return response.status

    return [("POST runs/create", create), ("GET runs/get", get)]


def free_port() -> int:
    """A free loopback port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mmkd_env(db_url: str, home: Path, **extra: str) -> dict[str, str]:
    """The environment of ``mmkd`` commands on ``db_url`` and the bench's Redis database."""
    return {**os.environ, "MMKD_DATABASE_URL": db_url, "MMKD_BROKER_URL": REDIS, "MMKD_HOME": str(home), **extra}


def run_mmkd(args: argparse.Namespace, home: Path) -> list[Phase]:
    """``mmkd serve`` on a fresh PostgreSQL database and Redis; returns its phases."""
    with database("mmkd_bench") as db_url:
        # One owner submits every phase's jobs and no worker starts them: lift the queued limit.
        env = mmkd_env(db_url, home, MMKD_MAX_QUEUED_PER_OWNER="1000000")
        subprocess.run([str(BIN / "mmkd"), "db", "upgrade"], env=env, check=True, capture_output=True)
        created = subprocess.run(
            [str(BIN / "mmkd"), "keys", "create", "--owner", "bench"],
            env=env,
            check=True,
            capture_output=True,
        )
        headers = {"Authorization": f"Bearer {created.stdout.decode().strip()}"}
        port = free_port()
        command = [
            str(BIN / "mmkd"),
            "serve",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--no-migrate",
        ]
        url = f"http://127.0.0.1:{port}"
        try:
            with server(command, env, url, "/healthz", home / "mmkd.log"):
                return asyncio.run(bench_target("mmkd", url, headers, mmkd_ops(), args))
        finally:
            import redis

            redis.Redis.from_url(REDIS).delete("gpu")  # the bench's train messages: nobody consumes them


def run_mlflow(args: argparse.Namespace, home: Path) -> list[Phase]:
    """``mlflow server`` on a fresh PostgreSQL database; returns its phases."""
    with database("mlflow_bench") as db_url:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [str(BIN / "mlflow"), "server", "--backend-store-uri", db_url, "--host", "127.0.0.1"]
        command += ["--port", str(port), "--workers", str(args.workers)]
        command += ["--default-artifact-root", str(home / "mlflow-artifacts")]
        with server(command, dict(os.environ), url, "/health", home / "mlflow.log"):
            response = httpx.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": "bench"}, timeout=30)
            response.raise_for_status()
            return asyncio.run(bench_target("mlflow", url, {}, mlflow_ops(response.json()["experiment_id"]), args))


def run_rounds(args: argparse.Namespace, home: Path) -> tuple[list[list[Phase]], list[list[Phase]], str | None]:
    """``args.rounds`` times: mmkd's phases, then MLflow's (fresh servers and databases each time)."""
    mmkd_rounds: list[list[Phase]] = []
    mlflow_rounds: list[list[Phase]] = []
    mlflow_error = "skipped (--skip-mlflow)" if args.skip_mlflow else None
    for _ in range(args.rounds):
        mmkd_rounds.append(run_mmkd(args, home))
        if mlflow_error is None:
            try:
                mlflow_rounds.append(run_mlflow(args, home))
            except Exception as exc:  # report our numbers alone, and say precisely why
                mlflow_error = f"{type(exc).__name__}: {exc}"
                mlflow_rounds = []
    return mmkd_rounds, mlflow_rounds, mlflow_error


def main() -> None:
    """Run both servers' phases (or the burst), print the table, optionally write it to docs/performance.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="Server worker processes (both servers).")
    parser.add_argument("--requests", type=int, default=1600, help="Requests per phase.")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=3, help="Repeat everything; report medians.")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--write-doc", action="store_true", help="Update docs/performance.md.")
    burst = parser.add_argument_group("burst scenario")
    burst.add_argument("--burst", action="store_true", help="Run the burst scenario instead of the phases.")
    burst.add_argument("--same", type=int, default=1000, help="Submits sharing one Idempotency-Key.")
    burst.add_argument("--distinct", type=int, default=200, help="Submits with keys of their own.")
    burst.add_argument("--attempts", type=int, default=20, help="Tries per request (503/429 are retried).")
    burst.add_argument("--request-timeout", type=float, default=60.0, help="Seconds per attempt.")
    burst.add_argument("--deadline", type=float, default=300.0, help="Seconds for the whole burst.")
    args = parser.parse_args()
    doc = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
    if args.burst:
        from bench.api_burst import burst_passed, burst_report, run_burst

        with tempfile.TemporaryDirectory(prefix="mmkd-burst-") as tmp:
            result = run_burst(args, Path(tmp))
        command = ".venv/bin/python -m bench.api_load " + " ".join(sys.argv[1:])
        section = burst_report(result, command, f"{platform.node()} ({os.cpu_count()} CPU cores)")
        print(section)
        if args.write_doc:
            write_section(doc, section, heading="## API burst")
        sys.exit(0 if burst_passed(result) else 1)
    with tempfile.TemporaryDirectory(prefix="mmkd-bench-") as tmp:
        mmkd_rounds, mlflow_rounds, mlflow_error = run_rounds(args, Path(tmp))
    section = report(mmkd_rounds, mlflow_rounds, mlflow_error, args)
    print(section)
    if args.write_doc:
        write_section(doc, section)


if __name__ == "__main__":
    main()
