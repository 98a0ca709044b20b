"""PostgreSQL and Redis for the test session: the configured servers when they answer, else throwaway ones.

``MMKD_TEST_SERVICES`` picks: ``auto`` (the default) uses a configured server when it accepts a
login (PostgreSQL) or answers PING (Redis) and starts a throwaway one otherwise; ``own`` always
starts throwaway servers; ``configured`` never does. A throwaway server runs from Debian's
binaries (``initdb``/``postgres`` under /usr/lib/postgresql/*/bin, ``redis-server``) on a free
loopback port in a temporary folder, and is stopped and deleted when the session ends (the kernel
stops it too if the test process dies first). A server that answers on that port is used only once
it says it runs from our folder (Redis's ``dir``, PostgreSQL's ``data_directory``): the port was
free when chosen, but another process may have taken it since, and the session must never adopt
(and flush) someone else's server. PostgreSQL refuses to run as root, so under root
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


def _same(folder: Path, ours: Path) -> bool:
    return folder.resolve() == ours.resolve()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


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

    def __init__(self, port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.root = Path(tempfile.mkdtemp(prefix=f"mmkd-test-{self.name}-"))
        self.log = self.root / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    @staticmethod
    def refusal(url: str) -> str | None:
        """Why a server of this kind at ``url`` cannot serve the tests; None when it can."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and wait until it answers."""
        raise NotImplementedError

    def stranger(self) -> str | None:
        """Why the server answering at our URL is not the one we started (its folder differs); None when it is."""
        raise NotImplementedError

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Poll ``refusal`` on our own URL until it is None; raise with the log if the server dies or is slow."""
        deadline = time.monotonic() + timeout
        while (why := self.refusal(self.url)) is not None:
            if self.process is not None and self.process.poll() is not None:
                raise MissingServer(
                    f"the throwaway {self.name} exited with {self.process.returncode}: {self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise MissingServer(
                    f"the throwaway {self.name} did not start in {timeout:.0f} s ({why}): {self._log_tail()}"
                )
            time.sleep(0.1)
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise MissingServer(f"the throwaway {self.name} exited with {code}: {self._log_tail()}")
        if (stranger := self.stranger()) is not None:
            raise MissingServer(
                f"another {self.name} answers on the throwaway's port 127.0.0.1:{self.port} ({stranger}): not using it"
            )

    def _log_tail(self) -> str:
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-3:]) if self.log.exists() else ""

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

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
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
        self.wait_until_ready()

    def stranger(self) -> str | None:
        """None when the server at our URL runs from our cluster's folder (``SHOW data_directory``)."""
        import psycopg
        from sqlalchemy.engine import make_url

        conninfo = make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            with psycopg.connect(conninfo, connect_timeout=2) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
        except psycopg.Error as error:
            return _first_line(error)
        folder = None if row is None else str(row[0])
        return None if folder and _same(Path(folder), self.root / "data") else f"its data directory is {folder}"

    @staticmethod
    def refusal(url: str) -> str | None:
        """None when ``url`` (a SQLAlchemy URL) accepts a login; else the server's or the socket's first line."""
        import psycopg
        from sqlalchemy.engine import make_url

        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            psycopg.connect(conninfo, connect_timeout=2).close()
        except psycopg.Error as error:
            return _first_line(error)
        return None


class ThrowawayRedis(ThrowawayServer):
    """``redis-server`` without persistence."""

    name = "redis"

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.url = f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise MissingServer(f"redis-server is not installed: {INSTALL_HINT}")
        flags = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.root)]
        self.spawn([binary, "--port", str(self.port), *flags])
        self.wait_until_ready()

    def stranger(self) -> str | None:
        """None when the server at our URL runs in our folder (``CONFIG GET dir``)."""
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2, decode_responses=True)
        try:
            folder = client.config_get("dir").get("dir")
        except redis.RedisError as error:
            return _first_line(error)
        finally:
            client.close()
        return None if folder and _same(Path(folder), self.root) else f"its folder is {folder}"

    @staticmethod
    def refusal(url: str) -> str | None:
        """None when ``url`` answers PING; else the first line of the error."""
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            client.ping()
        except redis.RedisError as error:
            return _first_line(error)
        finally:
            client.close()
        return None


def postgres_admin_url(configured: str) -> contextlib.AbstractContextManager[str]:
    """The admin URL of the configured PostgreSQL when it accepts a login, else of a throwaway server."""
    return _service("PostgreSQL", configured, ThrowawayPostgres)


def redis_base_url(configured: str) -> contextlib.AbstractContextManager[str]:
    """The base URL (no database number) of the configured Redis when it answers, else of a throwaway server."""
    return _service("Redis", configured, ThrowawayRedis)


@contextlib.contextmanager
def _service(label: str, configured: str, throwaway: type[ThrowawayServer]) -> Iterator[str]:
    mode = services_mode()
    where = urlsplit(configured).netloc.rsplit("@", 1)[-1]
    refusal = None if mode == "own" else throwaway.refusal(configured)
    if mode != "own" and refusal is None:
        SERVICES_USED.append(f"{label}: the configured server at {where}")
        yield configured
        return
    if mode == "configured":
        raise MissingServer(f"{label} at {where} cannot be used ({refusal}) and MMKD_TEST_SERVICES=configured")
    server = throwaway()
    try:
        server.start()
        why = "MMKD_TEST_SERVICES=own" if refusal is None else f"the configured {where}: {refusal}"
        SERVICES_USED.append(f"{label}: a throwaway server at 127.0.0.1:{server.port} ({why})")
        yield server.url
    finally:
        server.stop()
