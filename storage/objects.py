"""What every store shares and stores: a stored object's record, key checks and file digests.

A leaf: the stores (``storage.store``, ``storage.s3``) and the data checks import it, it imports
nothing of theirs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20  # bytes read at a time


@dataclass(frozen=True)
class StoredObject:
    """What a write stored: the relative key, its size in bytes and its SHA-256."""

    key: str
    size: int
    sha256: str


def digest_file(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in chunks."""
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            sha.update(block)
            size += len(block)
    return size, sha.hexdigest()


def check_key(key: str) -> str:
    """Reject absolute keys and keys with empty, ``.`` or ``..`` parts; return ``key``."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return key
