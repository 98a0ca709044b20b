"""The session's PostgreSQL and Redis: the configured servers when they answer, else throwaway ones."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest
import redis
import throwaway_services
from live_servers import free_port
from tests_support import process_alive
from throwaway_services import MissingServer, ThrowawayRedis, postgres_admin_url, redis_base_url


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
        configured = f"redis://127.0.0.1:{listener.getsockname()[1]}"
        with redis_base_url(configured) as url:
            assert url != configured
            assert redis.Redis.from_url(url).ping()
    assert "(the configured 127.0.0.1:" in quiet_summary[0] and "Timeout" in quiet_summary[0]


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
