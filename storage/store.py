"""Storage: one interface, an S3 implementation (boto3) and a local-folder one, and the one parser
of ``MMKD_STORAGE_URL``. The API (links, downloads, uploads), the worker (checkpoints, artifacts)
and the data loader all reach storage through this module.

Keys are relative (``jobs/{job_id}/...``); each store maps them under its own prefix. Every write
is atomic from a reader's point of view: S3 objects appear whole, local files are written to a
temporary name and renamed. Callers record a key in the database only after the write returned,
so a key in the database always names a complete object. Failures after retries raise
``core.errors.StorageError``; this module imports neither torch nor a web framework.

Local stores have no URLs of their own: ``presigned_url`` is None and the API serves the file
from ``local_path``; S3 stores hand out presigned GET URLs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from core.errors import StorageError
from settings import Settings
from storage.objects import CHUNK, StoredObject, check_key, digest_file


class ArtifactStore(Protocol):
    """Where checkpoints, exported students and reports live."""

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        """Store ``data`` under ``key``, replacing what was there."""

    def put_file(self, key: str, path: Path) -> StoredObject:
        """Upload the file at ``path`` under ``key`` (multipart when large)."""

    def get_bytes(self, key: str) -> bytes:
        """The object's content; FileNotFoundError when there is none."""

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of the object (fewer at its end); FileNotFoundError when it does not exist."""

    def list_top(self, limit: int) -> list[str]:
        """The files directly under the store's root (no deeper), sorted; at most ``limit`` of them are
        listed, so a caller refusing more than ``limit - 1`` never walks a huge folder."""

    def size(self, key: str) -> int:
        """The object's size in bytes, without reading it; FileNotFoundError when there is none."""

    def download(self, key: str, dest: Path) -> None:
        """Write the object to ``dest``; FileNotFoundError when there is none."""

    def list_keys(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix``, sorted."""

    def delete(self, keys: list[str]) -> None:
        """Remove ``keys``; missing ones are ignored."""

    def within(self, folder: str) -> ArtifactStore:
        """The store rooted at ``folder`` (a key prefix, with or without a trailing ``/``) of this one."""

    def presigned_url(self, key: str, *, expires_s: int = 3600) -> str | None:
        """A time-limited GET URL, or None when the store has none (the API serves the file)."""

    def local_path(self, key: str) -> Path | None:
        """The file behind ``key`` in a local store; None for remote stores or an invalid key."""

    def check(self) -> None:
        """Raise StorageError when the store cannot be reached."""


class LocalStore:
    """A folder on disk: the embedded default and the CLI's store."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write_atomically(self, key: str, write: Callable[[Any], None]) -> Path:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            with os.fdopen(fd, "wb") as handle:
                write(handle)
            os.replace(tmp, target)
        except OSError as error:
            raise StorageError(f"local store {self.root}: cannot write {key}: {error}") from error
        return target

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        """Write ``data`` to a temporary file, then rename it into place."""
        self._write_atomically(key, lambda handle: handle.write(data))
        return StoredObject(key, len(data), hashlib.sha256(data).hexdigest())

    def put_file(self, key: str, path: Path) -> StoredObject:
        """Copy ``path`` into the store atomically."""

        def copy(handle: Any) -> None:
            with Path(path).open("rb") as source:
                while block := source.read(CHUNK):
                    handle.write(block)

        target = self._write_atomically(key, copy)
        size, sha = digest_file(target)
        return StoredObject(key, size, sha)

    def get_bytes(self, key: str) -> bytes:
        """Read the file stored under ``key``."""
        return self._path(key).read_bytes()

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        """A positioned read of bytes ``[start, stop)``: nothing else of the file enters memory."""
        with self._path(key).open("rb") as handle:
            handle.seek(start)
            return handle.read(max(stop - start, 0))

    def size(self, key: str) -> int:
        """The file's size; FileNotFoundError for a missing file or a folder."""
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path.stat().st_size

    def download(self, key: str, dest: Path) -> None:
        """Copy the stored file to ``dest``."""
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(self.get_bytes(key))

    def list_keys(self, prefix: str) -> list[str]:
        """Every stored file under ``prefix`` (temporary files excluded)."""
        if not self.root.exists():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not k.endswith(".part"))

    def list_top(self, limit: int) -> list[str]:
        """The root folder's own files (no deeper; temporary files excluded), at most ``limit``."""
        if not self.root.is_dir():
            return []
        found = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.is_file() and not entry.name.endswith(".part"):
                    found.append(entry.name)
                    if len(found) >= limit:
                        break
        return sorted(found)

    def delete(self, keys: list[str]) -> None:
        """Remove the files; missing ones are ignored."""
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def within(self, folder: str) -> LocalStore:
        """The subfolder ``folder`` as a store of its own."""
        return LocalStore(self._path(folder.rstrip("/")))

    def presigned_url(self, key: str, *, expires_s: int = 3600) -> str | None:
        """None: the API serves local files itself."""
        return None

    def local_path(self, key: str) -> Path | None:
        """The file that holds ``key`` (for the API's download endpoint); None for an invalid key."""
        try:
            return self._path(key)
        except ValueError:
            return None

    def check(self) -> None:
        """The root folder exists or can be created."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"local store {self.root}: {error}") from error


@dataclass(frozen=True)
class Location:
    """A parsed storage URL: an S3 bucket and key prefix, or a local folder (``bucket`` None)."""

    bucket: str | None
    prefix: str
    path: Path | None


def parse_url(url: str) -> Location:
    """The one parser of storage URLs: ``s3://bucket/prefix``, ``file:///path`` (percent-decoded)
    or a plain path (``~`` expanded). Raises ValueError naming what is wrong."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket; use s3://bucket/prefix")
        return Location(parsed.netloc, parsed.path.strip("/"), None)
    if parsed.scheme == "file":
        return Location(None, "", Path(unquote(parsed.path)).expanduser().resolve())
    if parsed.scheme:
        raise ValueError(f"storage URL {url!r}: use s3://bucket/prefix, file:///path or a path")
    return Location(None, "", Path(url).expanduser().resolve())


def open_store(
    url: str, *, endpoint_url: str | None = None, max_attempts: int = 5, timeout_s: float = 10.0
) -> ArtifactStore:
    """The store for ``url``: ``s3://bucket/prefix`` (boto3), or a local path / ``file://`` URL."""
    location = parse_url(url)
    if location.bucket is None:
        assert location.path is not None
        return LocalStore(location.path)
    from storage.s3 import S3Store

    return S3Store(
        location.bucket, location.prefix, endpoint_url=endpoint_url, max_attempts=max_attempts, timeout_s=timeout_s
    )


def store_from_settings(settings: Settings) -> ArtifactStore:
    """The store named by ``MMKD_STORAGE_URL`` (default: a folder under ``MMKD_HOME``), with the
    configured endpoint, retries and timeouts."""
    return open_store(
        settings.resolved_storage_url,
        endpoint_url=settings.s3_endpoint_url,
        max_attempts=settings.storage_max_attempts,
        timeout_s=settings.storage_timeout_seconds,
    )


def read_uri(
    uri: str,
    *,
    max_bytes: int | None = None,
    endpoint_url: str | None = None,
    max_attempts: int = 5,
    timeout_s: float = 10.0,
) -> bytes:
    """The whole object at ``uri`` (``s3://bucket/key``, ``file:///path`` or a path), its size checked
    against ``max_bytes`` before a byte is read.

    Raises FileNotFoundError (no such object), :class:`ObjectTooLarge`, ValueError (not a URL of
    an object) or StorageError (unreachable after retries: a transient failure).
    """
    location = parse_url(uri)
    if location.bucket is None:
        assert location.path is not None
        store: ArtifactStore = LocalStore(location.path.parent)
        key = location.path.name
    else:
        if not location.prefix:
            raise ValueError(f"{uri!r} names a bucket, not an object")
        store = open_store(
            f"s3://{location.bucket}", endpoint_url=endpoint_url, max_attempts=max_attempts, timeout_s=timeout_s
        )
        key = location.prefix
    size = store.size(key)
    if max_bytes is not None and size > max_bytes:
        raise ObjectTooLarge(size, max_bytes)
    return store.get_bytes(key)


class ObjectTooLarge(ValueError):
    """An object larger than the limit it was read under."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes, over the limit of {limit} bytes")
        self.size, self.limit = size, limit


def is_allowed(uri: str, prefixes: list[str]) -> bool:
    """Whether ``uri`` lies under one of ``prefixes`` (``s3://bucket/prefix`` or local folders).

    Local paths are compared after resolving ``~``, ``..`` and symbolic links, so a link inside an
    allowed folder that points outside it is refused; S3 keys match whole path segments, so
    ``s3://b/data`` allows ``s3://b/data/x.npz`` but not ``s3://b/database.npz``.
    """
    try:
        target = parse_url(uri)
    except ValueError:
        return False
    for prefix in prefixes:
        try:
            allowed = parse_url(prefix)
        except ValueError:
            continue
        if target.bucket is None and allowed.bucket is None:
            assert target.path is not None and allowed.path is not None
            inside = target.path.is_relative_to(allowed.path) and target.path != allowed.path
        else:
            under = not allowed.prefix or target.prefix.startswith(allowed.prefix.rstrip("/") + "/")
            inside = target.bucket is not None and target.bucket == allowed.bucket and under
        if inside:
            return True
    return False
