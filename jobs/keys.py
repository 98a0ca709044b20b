"""API key logic: issue, authenticate, list, revoke. Keys are random; only their SHA-256 is stored."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.errors import NotFoundError
from jobs.models import ApiKey, Owner
from jobs.orm import utcnow

KEY_PREFIX = "mmkd_"
#: Refresh ``last_used_at`` at most this often, so authentication is not a write per request.
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class Principal:
    """The owner a request acts for."""

    id: int
    name: str


class AuthCache:
    """Keys authenticated in the last ``ttl_seconds``, so most requests skip the key lookup.

    The price: a revoked key keeps working on a process that cached it for at most ``ttl_seconds``.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Principal | None:
        """The cached principal, if still fresh."""
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < self._clock():
            return None
        return entry[1]

    def put(self, key_hash: str, principal: Principal) -> None:
        """Remember a successful authentication."""
        if self.ttl_seconds <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[key_hash] = (self._clock() + self.ttl_seconds, principal)


def hash_key(token: str) -> str:
    """SHA-256 hex of a key; enough for 256-bit random secrets (no password stretching needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def get_or_create_owner(session: Session, *, name: str) -> Owner:
    """The owner called ``name``, created if new (not committed; losing a creation race rolls the
    session back, so call it first in a transaction)."""
    query = select(Owner).where(Owner.name == name)
    owner = session.scalars(query).one_or_none()
    if owner is not None:
        return owner
    owner = Owner(name=name, created_at=utcnow())
    session.add(owner)
    try:
        session.flush()
    except IntegrityError:  # a concurrent request created it first
        session.rollback()
        return session.scalars(query).one()
    return owner


def create_key(session: Session, *, owner_name: str) -> tuple[ApiKey, str]:
    """Issue a key for ``owner_name`` (creating the owner) and commit; the plaintext is returned once."""
    owner = get_or_create_owner(session, name=owner_name)
    public = secrets.token_hex(4)
    token = f"{KEY_PREFIX}{public}_{secrets.token_urlsafe(32)}"
    key = ApiKey(owner_id=owner.id, prefix=f"{KEY_PREFIX}{public}", key_hash=hash_key(token), created_at=utcnow())
    session.add(key)
    session.commit()
    return key, token


def authenticate(session: Session, *, token: str, cache: AuthCache | None = None) -> Principal | None:
    """The owner of a valid, unrevoked key, or ``None``; touches ``last_used_at`` now and then."""
    return authenticate_hash(session, key_hash=hash_key(token), cache=cache)


def authenticate_hash(session: Session, *, key_hash: str, cache: AuthCache | None = None) -> Principal | None:
    """:func:`authenticate` for a key known by its hash (a dashboard session keeps only the hash)."""
    cached = cache.get(key_hash) if cache is not None else None
    if cached is not None:
        return cached
    row = session.execute(
        select(ApiKey, Owner)
        .join(Owner, Owner.id == ApiKey.owner_id)
        .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    ).one_or_none()
    if row is None:
        return None
    key, owner = row
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        key.last_used_at = now
        session.commit()
    principal = Principal(id=owner.id, name=owner.name)
    if cache is not None:
        cache.put(key_hash, principal)
    return principal


def list_keys(session: Session, *, owner_name: str | None = None) -> list[tuple[ApiKey, Owner]]:
    """Every key with its owner, oldest first, optionally for one owner."""
    query = select(ApiKey, Owner).join(Owner, Owner.id == ApiKey.owner_id).order_by(ApiKey.id)
    if owner_name is not None:
        query = query.where(Owner.name == owner_name)
    return [(key, owner) for key, owner in session.execute(query).all()]


def revoke_key(session: Session, *, key_ref: str) -> ApiKey:
    """Revoke a key given its id or its prefix and commit; revoking twice keeps the first time."""
    query = select(ApiKey).where(ApiKey.prefix == key_ref)
    if key_ref.isdigit():
        query = select(ApiKey).where(ApiKey.id == int(key_ref))
    key = session.scalars(query).one_or_none()
    if key is None:
        raise NotFoundError(f"no API key {key_ref!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.commit()
    return key
