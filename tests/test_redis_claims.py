"""Redis database numbers are claimed atomically: two sessions never hold the same one."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis_claims import NUMBERS, DatabaseClaims, NoFreeDatabase


@pytest.fixture
def prefix(redis_base_url: str) -> Iterator[str]:
    """A claim-key prefix of this test's own, so the session's real claims are never touched."""
    name = f"mmkd-test-claims-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(f"{redis_base_url}/0")
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)
    client.close()


def test_sessions_claiming_at_once_never_get_the_same_number(redis_base_url: str, prefix: str) -> None:
    sessions = [DatabaseClaims(redis_base_url, prefix=prefix) for _ in range(len(NUMBERS) + 1)]
    start = threading.Barrier(len(sessions))
    claimed: list[int] = []
    refused: list[str] = []

    def claim(session: DatabaseClaims) -> None:
        start.wait()
        try:
            claimed.append(session.claim())
        except NoFreeDatabase as error:
            refused.append(str(error))

    threads = [threading.Thread(target=claim, args=(session,)) for session in sessions]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for session in sessions:
            session.close()
    assert sorted(claimed) == list(NUMBERS)
    (message,) = refused
    assert message.startswith(f"every Redis database number 1..15 at 127.0.0.1:{redis_base_url.rsplit(':', 1)[1]}")


def test_a_released_number_is_free_again_and_only_its_holder_releases_it(redis_base_url: str, prefix: str) -> None:
    first, second = DatabaseClaims(redis_base_url, prefix=prefix), DatabaseClaims(redis_base_url, prefix=prefix)
    try:
        number = first.claim()
        second.release(number)  # not second's: its key stays
        assert second.claim() != number
        first.release(number)
        assert second.claim() == number
    finally:
        first.close()
        second.close()
    third = DatabaseClaims(redis_base_url, prefix=prefix)
    assert third.claim() == NUMBERS[0]  # close() released everything
    third.close()


def test_a_held_claim_is_renewed(redis_base_url: str, prefix: str) -> None:
    claims = DatabaseClaims(redis_base_url, prefix=prefix, lease_seconds=600)
    client = redis.Redis.from_url(f"{redis_base_url}/0")
    try:
        key = f"{prefix}:{claims.claim()}"
        client.expire(key, 5)
        claims.renew()
        assert client.ttl(key) > 500
    finally:
        claims.close()
        client.close()


def test_a_claimed_database_is_flushed_after_use(redis_databases: DatabaseClaims) -> None:
    with redis_databases.database() as url:  # a real claim: the numbers are shared with every other session
        client = redis.Redis.from_url(url)
        client.set("left", "behind")
    assert client.dbsize() == 0
    client.close()
