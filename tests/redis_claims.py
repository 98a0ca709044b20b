"""Redis database numbers claimed atomically, so test sessions on one Redis never share (and flush) one.

A session holds a number while the key ``mmkd-test-db:{n}`` on database 0 holds its token: taken
with ``SET ... NX EX``, so of two sessions asking at once exactly one gets it; renewed by a daemon
thread while held (a long ``make fuzz`` outlives one lease); deleted, only if still ours, on release.
A session killed before it releases frees its numbers when their lease runs out.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator

import redis

PREFIX = "mmkd-test-db"
NUMBERS = range(1, 16)  # database 0 holds the claims
LEASE_SECONDS = 3600
_IF_OURS = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call({}) end return 0"
_IF_OURS_EXPIRE = _IF_OURS.format("'expire', KEYS[1], ARGV[2]")
_IF_OURS_DELETE = _IF_OURS.format("'del', KEYS[1]")


class NoFreeDatabase(RuntimeError):
    """Every database number is claimed by another session; the message says so in one line."""


class DatabaseClaims:
    """The database numbers this session holds on the Redis at ``base_url`` (a URL without a number)."""

    def __init__(self, base_url: str, *, prefix: str = PREFIX, lease_seconds: int = LEASE_SECONDS) -> None:
        self.base_url, self.prefix, self.lease_seconds = base_url, prefix, lease_seconds
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.client = redis.Redis.from_url(f"{base_url}/0")
        self.held: set[int] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._renewer = threading.Thread(target=self._renew_until_closed, name="redis-claims", daemon=True)
        self._renewer.start()

    def claim(self) -> int:
        """The lowest number no session holds, now ours; NoFreeDatabase when there is none."""
        for number in NUMBERS:
            if self.client.set(f"{self.prefix}:{number}", self.token, nx=True, ex=self.lease_seconds):
                with self._lock:
                    self.held.add(number)
                return number
        where = self.base_url.rsplit("@", 1)[-1].removeprefix("redis://")
        raise NoFreeDatabase(
            f"every Redis database number {NUMBERS[0]}..{NUMBERS[-1]} at {where} is claimed by another test session"
            f" ({self.prefix}:* on database 0; a killed session's claims expire within {self.lease_seconds} s)"
        )

    def release(self, number: int) -> None:
        """Give ``number`` back (its key is deleted only while it still holds our token)."""
        with self._lock:
            self.held.discard(number)
        self.client.eval(_IF_OURS_DELETE, 1, f"{self.prefix}:{number}", self.token)

    def renew(self) -> None:
        """Restart the lease of every number we hold."""
        with self._lock:
            held = sorted(self.held)
        for number in held:
            self.client.eval(_IF_OURS_EXPIRE, 1, f"{self.prefix}:{number}", self.token, self.lease_seconds)

    def _renew_until_closed(self) -> None:
        while not self._closed.wait(self.lease_seconds / 6):
            with contextlib.suppress(redis.RedisError):  # a Redis outage a test simulates: renew next time
                self.renew()

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A database number of our own, flushed before and after use: its URL."""
        number = self.claim()
        url = f"{self.base_url}/{number}"
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
            yield url
        finally:
            try:
                client.flushdb()
            finally:
                client.close()
                self.release(number)

    def close(self) -> None:
        """Stop renewing and release every number still held."""
        self._closed.set()
        self._renewer.join()
        with self._lock:
            held = sorted(self.held)
        for number in held:
            self.release(number)
        self.client.close()
