"""``mmkd worker`` (a real Celery worker, optionally with the reaper) and ``mmkd up`` (the embedded
stack: API, one worker and the reaper on SQLite and a local folder, no external server).

The reaper runs as a thread of this command's process, never inside the Celery worker (whose pool
forks children). Child processes get their own session so Ctrl-C reaches only this process, which
then stops them in order and kills each one's whole process group: nothing is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from cli.common import fail

log = logging.getLogger("mmkd")
STOP_GRACE_SECONDS = 10.0
DEFAULT_HOME = Path(".mmkd")
PR_SET_PDEATHSIG = 1


def celery_worker_command(queues: str, concurrency: int, loglevel: str = "info") -> list[str]:
    """The command line of one Celery worker process for ``queues``."""
    return [
        sys.executable,
        "-m",
        "celery",
        "--app",
        "worker.celery_app:app",
        "worker",
        "--queues",
        queues,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--hostname",
        f"mmkd-{uuid.uuid4().hex[:6]}@%h",
        "--without-gossip",
        "--without-mingle",
    ]


def start_reaper(stop: threading.Event) -> threading.Thread:
    """Run the reaper loop in a daemon thread until ``stop`` is set."""
    from jobs.db import engine_for, session_factory
    from jobs.publish import publisher
    from jobs.reaper import run_reaper
    from studies.service import advance_running
    from worker.config import get_worker_settings

    settings = get_worker_settings()
    sessions = session_factory(engine_for(settings.resolved_database_url, 2))
    thread = threading.Thread(
        target=run_reaper,
        args=(sessions,),
        kwargs={
            "enqueue": publisher(settings),
            "interval_seconds": settings.reaper_interval_seconds,
            "requeue_after_seconds": settings.requeue_after_seconds,
            "stop": stop,
            "advance_studies": partial(
                advance_running, database_url=settings.resolved_database_url, max_attempts=settings.max_attempts
            ),
        },
        name="reaper",
        daemon=True,
    )
    thread.start()
    return thread


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM if this process dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    command: list[str], env: dict[str, str] | None = None, pass_fds: Sequence[int] = ()
) -> subprocess.Popen[bytes]:
    """Start a child in its own session (own process group) so signals reach it only through us;
    ``pass_fds`` are inherited by the child under the same numbers.

    Call it from the main thread before starting other threads (``preexec_fn`` runs after fork).
    """
    on_linux = sys.platform == "linux"
    return subprocess.Popen(
        command,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent if on_linux else None,
        pass_fds=pass_fds,
    )


def stop_children(children: list[subprocess.Popen[bytes]], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM each child's process group, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for child in children:
        if child.poll() is None:
            _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("pid %s did not stop in %ss; killing it", child.pid, grace)
        _signal_group(child, signal.SIGKILL)  # also reaps grandchildren (Celery's pool)
        child.wait()


def _signal_group(child: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signum)


def supervise(children: list[subprocess.Popen[bytes]], stop: threading.Event) -> int:
    """Wait for SIGINT/SIGTERM or a child's exit, then stop everything; 1 when a child died first."""
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    died = None
    while not stop.is_set() and died is None:
        died = next((child for child in children if child.poll() is not None), None)
        stop.wait(0.5)
    stop.set()
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    if died is not None:
        log.error("pid %s exited with code %s; stopping the others", died.pid, died.returncode)
    stop_children(children)
    return 1 if died is not None else 0


def worker_command(
    queues: str = typer.Option("gpu", help="Comma-separated queues to consume (one per GPU class)."),
    concurrency: int = typer.Option(1, min=1, help="Jobs at once; use one process per GPU."),
    beat: bool = typer.Option(False, "--beat", help="Also run the reaper loop in this process."),
    loglevel: str = typer.Option("info", help="Celery log level."),
) -> None:
    """Start a Celery worker that trains jobs (and, with --beat, the reaper)."""
    command = celery_worker_command(queues, concurrency, loglevel)
    if not beat:  # become the Celery worker: signals and exit codes are its own
        os.execv(command[0], command)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    children = [spawn(command)]
    stop = threading.Event()
    start_reaper(stop)
    raise typer.Exit(supervise(children, stop))


def embedded_environment(home: Path, host: str) -> dict[str, str]:
    """``MMKD_*`` variables for the embedded stack; explicit settings in the environment win."""
    env = {"MMKD_HOME": str(home.resolve()), "MMKD_HOST": host}
    loopback = host in ("127.0.0.1", "::1", "localhost")
    if loopback:
        env["MMKD_AUTH"] = "false"
    return {**env, **{k: v for k, v in os.environ.items() if k.startswith("MMKD_") and k != "MMKD_HOST"}}


def bind_api_socket(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` here, before anything starts: a busy port is one error line, and the API
    that answers there later can only be the child this socket is handed to."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
    try:
        sock.bind((host, port))
        sock.listen()  # a bound socket nobody listens on yet would let another SO_REUSEADDR bind it too
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fail(f"port {port} on {host} is in use (another mmkd up or server?); choose another with --port")
        fail(f"cannot listen on {host} port {port}: {exc.strerror or exc}")
    return sock


def api_url(host: str, port: int) -> str:
    """The API's base URL; an IPv6 literal in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def api_command(fd: int) -> list[str]:
    """uvicorn serving the API factory on the bound socket ``fd`` (inherited by the child)."""
    return [sys.executable, "-m", "cli.serve_socket", str(fd)]


def wait_until_up(url: str, children: Sequence[subprocess.Popen[bytes]] = (), timeout: float = 60.0) -> None:
    """Poll ``{url}/healthz`` until it answers 200 while every one of ``children`` still runs;
    fail as soon as one of them exits (an answer then would come from someone else)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answered = httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            answered = False
        if any(child.poll() is not None for child in children):
            raise RuntimeError("a child process exited during start-up")
        if answered:
            return
        time.sleep(0.3)
    raise TimeoutError(f"the API did not answer at {url} within {timeout}s")


def up_command(
    host: str = typer.Option("127.0.0.1", help="API address; auth is off only on loopback."),
    port: int = typer.Option(8000, help="API port."),
    home: Annotated[Path, typer.Option(envvar="MMKD_HOME", help="Database, broker and artifacts.")] = DEFAULT_HOME,
) -> None:
    """Start the embedded stack (API, one worker, reaper) until Ctrl-C."""
    api_socket = bind_api_socket(host, port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.update(embedded_environment(home, host))
    from jobs.migrate import upgrade
    from service.config import get_settings

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    with api_socket:  # the API child holds its own copy; this process keeps none
        api = spawn(api_command(api_socket.fileno()), pass_fds=[api_socket.fileno()])
    children = [api, spawn(celery_worker_command("gpu", 1, "warning"))]
    stop = threading.Event()
    url = api_url(host, port)
    try:
        wait_until_up(url, children)
    except (RuntimeError, TimeoutError) as error:
        stop_children(children)
        typer.echo(f"mmkd up failed: {error}", err=True)
        raise typer.Exit(1) from error
    start_reaper(stop)
    auth = "OFF (loopback only: every local client acts as owner 'local')" if not settings.auth else "on"
    typer.echo(f"mmkd is up: dashboard {url}/, API {url}/v1 (docs {url}/docs), one worker, reaper")
    typer.echo(f"  home {settings.home.resolve()}: database, broker and artifacts; authentication {auth}")
    typer.echo("  Ctrl-C stops everything")
    raise typer.Exit(supervise(children, stop))


def register(app: typer.Typer) -> None:
    """Add ``worker`` and ``up`` to ``app``."""
    app.command("worker")(worker_command)
    app.command("up")(up_command)
