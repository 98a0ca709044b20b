"""The session's PostgreSQL and Redis: the configured servers when they answer, else throwaway ones."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import psycopg
import pytest
import redis
import throwaway_services
from live_servers import free_port
from tests_support import process_alive
from throwaway_services import MissingServer, ThrowawayPostgres, ThrowawayRedis, postgres_admin_url, redis_base_url


@pytest.fixture(autouse=True)
def quiet_summary(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """These tests' servers stay out of the session's ``services:`` summary lines."""
    used: list[str] = []
    monkeypatch.setattr(throwaway_services, "SERVICES_USED", used)
    monkeypatch.delenv("MMKD_TEST_SERVICES", raising=False)
    return used


def _folders(prefix: str) -> set[Path]:
    return set(Path(throwaway_services.tempfile.gettempdir()).glob(f"mmkd-test-{prefix}-*"))


def test_unreachable_postgres_gets_a_throwaway_server_that_is_gone_afterwards(quiet_summary: list[str]) -> None:
    folders_before = _folders("postgres")
    port = free_port()
    configured = f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"
    with postgres_admin_url(configured) as url:
        assert url != configured and url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
        plain = url.replace("+psycopg", "")
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute("CREATE DATABASE made_here")
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        (folder,) = _folders("postgres") - folders_before
        assert (folder / "data" / "PG_VERSION").exists()
    (line,) = quiet_summary
    assert line.startswith("PostgreSQL: a throwaway server at 127.0.0.1:")
    assert f"(the configured 127.0.0.1:{port}: connection failed" in line
    assert not folder.exists() and not process_alive(pid[0])
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(plain, connect_timeout=2)


def test_unreachable_redis_gets_a_throwaway_server_that_is_gone_afterwards() -> None:
    configured = f"redis://127.0.0.1:{free_port()}"
    with redis_base_url(configured) as url:
        assert url != configured
        client = redis.Redis.from_url(f"{url}/3")
        assert client.set("k", "v") and client.get("k") == b"v"
        client.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


def test_a_server_that_answers_is_used_as_it_is(quiet_summary: list[str]) -> None:
    configured = ThrowawayRedis()
    configured.start()
    try:
        with redis_base_url(configured.url) as url:
            assert url == configured.url
    finally:
        configured.stop()
    assert quiet_summary == [f"Redis: the configured server at 127.0.0.1:{configured.port}"]


def test_a_port_that_is_not_redis_gets_a_throwaway_server(quiet_summary: list[str]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        configured = f"redis://127.0.0.1:{port}"
        with redis_base_url(configured) as url:
            assert url != configured
            assert redis.Redis.from_url(url).ping()
    (line,) = quiet_summary
    assert re.fullmatch(
        rf"Redis: a throwaway server at 127\.0\.0\.1:\d+ \(the configured 127\.0\.0\.1:{port}: \S.*\)", line
    )


def _adopted(error: MissingServer, name: str, port: int) -> bool:
    """The start failed because ``port`` was taken: ours exited on it, or the server there is not ours."""
    return bool(
        re.fullmatch(
            rf"another {name} answers on the throwaway's port 127\.0\.0\.1:{port} \(.+\): not using it", str(error)
        )
        or re.fullmatch(rf"the throwaway {name} exited with \d+: .*", str(error))
    )


def test_a_foreign_redis_on_the_throwaways_port_is_never_adopted() -> None:
    foreign = ThrowawayRedis()
    foreign.start()
    client = redis.Redis.from_url(f"{foreign.url}/0")
    try:
        client.set("theirs", "kept")
        ours = ThrowawayRedis(port=foreign.port)  # the free port someone took between free_port() and our bind
        try:
            with pytest.raises(MissingServer) as raised:
                ours.start()
        finally:
            ours.stop()
        assert _adopted(raised.value, "redis", foreign.port), raised.value
        assert client.get("theirs") == b"kept"
    finally:
        client.close()
        foreign.stop()


def test_a_foreign_postgres_on_the_throwaways_port_is_never_adopted() -> None:
    foreign = ThrowawayPostgres()
    foreign.start()
    try:
        ours = ThrowawayPostgres(port=foreign.port)
        try:
            with pytest.raises(MissingServer) as raised:
                ours.start()
        finally:
            ours.stop()
        assert _adopted(raised.value, "postgres", foreign.port), raised.value
        assert ThrowawayPostgres.refusal(foreign.url) is None
    finally:
        foreign.stop()


def test_a_postgres_without_the_configured_database_gets_a_throwaway_server(quiet_summary: list[str]) -> None:
    with postgres_admin_url("postgresql+psycopg://postgres@127.0.0.1:1/x") as first:
        missing = first.rsplit("/", 1)[0] + "/no_such_database"
        with postgres_admin_url(missing) as second:
            assert second != missing
    assert 'database "no_such_database" does not exist' in quiet_summary[1]


def test_configured_mode_never_starts_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMKD_TEST_SERVICES", "configured")
    where = f"127.0.0.1:{free_port()}"
    with pytest.raises(
        MissingServer, match=rf"^Redis at {where} cannot be used \(.+\) and MMKD_TEST_SERVICES=configured$"
    ):
        redis_base_url(f"redis://{where}").__enter__()


def test_missing_binaries_say_how_to_install_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throwaway_services.shutil, "which", lambda name: None)
    folders_before = _folders("redis")
    with pytest.raises(MissingServer, match=r"^redis-server is not installed: run `make install` as root"):
        redis_base_url(f"redis://127.0.0.1:{free_port()}").__enter__()
    assert _folders("redis") == folders_before  # nothing left behind
