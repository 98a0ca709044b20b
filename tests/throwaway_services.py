"""PostgreSQL and Redis for the test session: the configured servers when they answer, else throwaway ones.

``MMKD_TEST_SERVICES`` picks: ``auto`` (the default) uses a configured server when its port accepts
connections and starts a throwaway one otherwise; ``own`` always starts throwaway servers;
``configured`` never does. A throwaway server runs from Debian's binaries (``initdb``/``postgres``
under /usr/lib/postgresql/*/bin, ``redis-server``) on a free loopback port in a temporary folder,
and is stopped and deleted when the session ends. PostgreSQL refuses to run as root, so under root
it runs as the ``postgres`` user in a folder that user owns. ``make install`` installs the binaries
when they are missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from live_servers import free_port

#: What the session used, one line per service, for the terminal summary.
SERVICES_USED: list[str] = []
MODES = ("auto", "own", "configured")
INSTALL_HINT = "run `make install` as root (it installs Debian's postgresql and redis-server)"


class MissingServer(RuntimeError):
    """A throwaway server is needed but cannot be started; the message says why in one line."""


def services_mode() -> str:
    """``MMKD_TEST_SERVICES``: auto, own or configured."""
    mode = os.environ.get("MMKD_TEST_SERVICES", "auto")
    if mode not in MODES:
        raise MissingServer(f"MMKD_TEST_SERVICES must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def reachable(url: str, default_port: int) -> bool:
    """True when the host and port of ``url`` accept a TCP connection within a second."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1.0):
            return True
    except OSError:
        return False


def postgres_binary(name: str) -> Path:
    """``name`` (initdb, postgres) from the newest /usr/lib/postgresql/*/bin, else from PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
        reverse=True,
    )
    found = candidates[0] if candidates else shutil.which(name)
    if found is None:
        raise MissingServer(f"PostgreSQL's {name} is not installed: {INSTALL_HINT}")
    return Path(found)


def _wait_until(check: Iterator[bool], what: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for ready in check:
        if ready:
            return
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise MissingServer(f"{what} did not start within {timeout:.0f} s: {tail.strip()}")
        time.sleep(0.1)


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _dies_with(stop_signal: signal.Signals) -> Callable[[], None]:
    """A preexec hook: the kernel sends ``stop_signal`` to the server if the test process dies first."""

    def hook() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(stop_signal))

    return hook


class ThrowawayServer:
    """A server process on a free loopback port in a temporary folder of its own."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix=f"mmkd-test-{self.name}-"))
        self.log = self.root / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        """Start the server and wait until it answers."""
        raise NotImplementedError

    def spawn(self, command: list[str], user: str | None = None) -> None:
        """Start ``command`` (as ``user`` when given), its output in the log file."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=user,
                cwd=self.root,
                preexec_fn=_dies_with(self.stop_signal),  # after the switch to ``user``, which would reset it
            )

    def running(self) -> bool:
        """Raise with the log when the process has already ended; True otherwise."""
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise MissingServer(f"the throwaway {self.name} exited with {self.process.returncode}: {tail.strip()}")
        return True

    def stop(self) -> None:
        """Stop the process (killed if it lingers) and delete its folder."""
        if self.process is not None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)


class ThrowawayPostgres(ThrowawayServer):
    """A fresh cluster (trust auth for ``postgres``, no fsync): ``initdb`` then ``postgres``."""

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown: disconnects the clients instead of waiting for them

    def __init__(self) -> None:
        super().__init__()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Create the cluster, start the server and wait until it accepts a login."""
        initdb, postgres = postgres_binary("initdb"), postgres_binary("postgres")
        if self.user is not None:
            try:
                account = pwd.getpwnam(self.user)
            except KeyError:
                message = f"PostgreSQL will not run as root and there is no {self.user} user: {INSTALL_HINT}"
                raise MissingServer(message) from None
            os.chown(self.root, account.pw_uid, account.pw_gid)
        data = self.root / "data"
        initdb_command = [str(initdb), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        done = subprocess.run(
            [*initdb_command, "--locale=C", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, user=self.user, cwd=self.root, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise MissingServer(f"initdb failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.root),
            "max_connections": "200",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        options = [item for key, value in settings.items() for item in ("-c", f"{key}={value}")]
        self.spawn([str(postgres), "-D", str(data), "-p", str(self.port), *options], user=self.user)
        _wait_until(self._accepts_login(), "the throwaway PostgreSQL", self.log)

    def _accepts_login(self) -> Iterator[bool]:
        import psycopg

        while self.running():
            try:
                psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", connect_timeout=2).close()
            except psycopg.OperationalError:
                yield False
            else:
                yield True


class ThrowawayRedis(ThrowawayServer):
    """``redis-server`` without persistence."""

    name = "redis"

    def __init__(self) -> None:
        super().__init__()
        self.url = f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise MissingServer(f"redis-server is not installed: {INSTALL_HINT}")
        flags = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.root)]
        self.spawn([binary, "--port", str(self.port), *flags])
        _wait_until(self._answers_ping(), "the throwaway Redis", self.log)

    def _answers_ping(self) -> Iterator[bool]:
        import redis

        while self.running():
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
            try:
                yield bool(client.ping())
            except redis.ConnectionError:
                yield False
            finally:
                client.close()


def postgres_admin_url(configured: str) -> contextlib.AbstractContextManager[str]:
    """The admin URL of the configured PostgreSQL when it is reachable, else of a throwaway one."""
    return _service("PostgreSQL", configured, 5432, ThrowawayPostgres)


def redis_base_url(configured: str) -> contextlib.AbstractContextManager[str]:
    """The base URL (no database number) of the configured Redis when reachable, else of a throwaway one."""
    return _service("Redis", configured, 6379, ThrowawayRedis)


@contextlib.contextmanager
def _service(label: str, configured: str, default_port: int, throwaway: type[ThrowawayServer]) -> Iterator[str]:
    mode = services_mode()
    where = urlsplit(configured).netloc.rsplit("@", 1)[-1]
    if mode != "own" and reachable(configured, default_port):
        SERVICES_USED.append(f"{label}: the configured server at {where}")
        yield configured
        return
    if mode == "configured":
        raise MissingServer(f"{label} is not reachable at {where} and MMKD_TEST_SERVICES=configured")
    server = throwaway()
    try:
        server.start()
        why = "MMKD_TEST_SERVICES=own" if mode == "own" else f"nothing answers at {where}"
        SERVICES_USED.append(f"{label}: a throwaway server at 127.0.0.1:{server.port} ({why})")
        yield server.url
    finally:
        server.stop()
