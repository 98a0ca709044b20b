"""How the API hands out artifact downloads. The worker (issue 4) writes the files; here we only
link to them. Artifact keys are relative to the store root (the S3 prefix or the local folder).

- ``s3://bucket/prefix``: :meth:`ArtifactLinks.link_for` gives a presigned GET URL.
- ``file:///path``: ``link_for`` gives ``None`` and the API serves the file itself from
  ``GET /v1/jobs/{id}/artifacts/{artifact_id}/download``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from service.config import Settings

PRESIGN_SECONDS = 3600


class ArtifactLinks(Protocol):
    """Where a client downloads an artifact from."""

    def link_for(self, key: str) -> str | None:
        """A direct URL for ``key``, or ``None`` when the API serves the file itself."""

    def local_path(self, key: str) -> Path | None:
        """The file behind ``key`` for a local store, else ``None``."""

    def check(self) -> None:
        """Raise if the store cannot be reached."""


class LocalLinks:
    """A folder on this machine (the embedded default)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def link_for(self, key: str) -> str | None:
        """Local files are served by the API."""
        return None

    def local_path(self, key: str) -> Path | None:
        """The file for ``key``, refusing keys that climb out of the root."""
        path = (self.root / key).resolve()
        return path if path.is_relative_to(self.root) else None

    def check(self) -> None:
        """The root folder must exist or be creatable."""
        self.root.mkdir(parents=True, exist_ok=True)


class S3Links:
    """An S3-compatible bucket (AWS, MinIO, moto) reached with boto3."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        self.bucket, self.prefix, self.endpoint_url = bucket, prefix.strip("/"), endpoint_url
        self._client: Any = None

    def _s3(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2})
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def _object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def link_for(self, key: str) -> str | None:
        """A presigned GET URL valid for an hour."""
        params = {"Bucket": self.bucket, "Key": self._object_key(key)}
        url: str = self._s3().generate_presigned_url("get_object", Params=params, ExpiresIn=PRESIGN_SECONDS)
        return url

    def local_path(self, key: str) -> Path | None:
        """Objects in S3 have no local path."""
        return None

    def check(self) -> None:
        """The bucket must answer HEAD."""
        self._s3().head_bucket(Bucket=self.bucket)


def links_from_settings(settings: Settings) -> ArtifactLinks:
    """The link maker for ``MMKD_STORAGE_URL`` (``s3://bucket/prefix`` or ``file:///path``)."""
    url = urlparse(settings.resolved_storage_url)
    if url.scheme == "s3":
        return S3Links(url.netloc, url.path, settings.s3_endpoint_url)
    if url.scheme in {"file", ""}:
        return LocalLinks(Path(unquote(url.path)))
    raise ValueError(f"MMKD_STORAGE_URL must be s3://bucket/prefix or file:///path, got {url.geturl()!r}")
