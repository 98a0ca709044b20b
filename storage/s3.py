"""The S3 artifact store: boto3 with standard-mode retries, managed multipart transfers and
presigned GET URLs. Works against AWS, MinIO and moto's server (``endpoint_url``).

Credentials and region come from boto3's standard chain (``AWS_ACCESS_KEY_ID``, profiles, instance
roles ...). botocore retries connection errors, throttling and 5xx with jittered exponential
backoff up to ``max_attempts`` in total; what still fails becomes a ``StorageError``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.errors import StorageError
from storage.objects import StoredObject, check_key, digest_file

T = TypeVar("T")
#: Treated alike as "no such object": a denied read must not tell whether the object exists.
_MISSING = {"NoSuchKey", "404", "NotFound", "403", "AccessDenied", "Forbidden", "NoSuchBucket"}
#: A client's mistake in a multipart upload, not an outage.
_BAD_PARTS = frozenset({"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "NoSuchUpload", "MalformedXML"})


class S3Store:
    """Objects under ``s3://bucket/prefix``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        max_attempts: int = 5,
        timeout_s: float = 10.0,
        multipart_threshold: int = 64 << 20,
        multipart_chunksize: int = 16 << 20,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        config = Config(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            # MinIO and moto want path-style addressing; AWS accepts it too.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=4,
        )

    def _full(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(
        self,
        what: str,
        key: str,
        operation: Callable[[], T],
        *,
        may_be_missing: bool = False,
        refused: frozenset[str] = frozenset(),
    ) -> T:
        try:
            return operation()
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if may_be_missing and code in _MISSING:
                raise FileNotFoundError(f"s3://{self.bucket}/{self._full(key)}") from error
            if code in refused:
                raise ValueError(f"S3 refused the {what}: {code}") from error
            raise StorageError(f"S3 {what} s3://{self.bucket}/{key} failed: {code or error}") from error
        except BotoCoreError as error:
            raise StorageError(f"S3 {what} s3://{self.bucket}/{key} failed after retries: {error}") from error

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        """One PUT; S3 makes the object visible only when complete."""
        self._call("put", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data))
        return StoredObject(key, len(data), hashlib.sha256(data).hexdigest())

    def put_file(self, key: str, path: Path) -> StoredObject:
        """Managed upload: multipart above the threshold, completed atomically by S3."""
        size, sha = digest_file(Path(path))
        self._call(
            "upload",
            key,
            lambda: self.client.upload_file(str(path), self.bucket, self._full(key), Config=self.transfer),
        )
        return StoredObject(key, size, sha)

    def get_bytes(self, key: str) -> bytes:
        """GET the whole object."""

        def get() -> bytes:
            body: Any = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
            return bytes(body.read())

        return self._call("get", key, get, may_be_missing=True)

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        """A ranged GET of bytes ``[start, stop)``."""
        if stop <= start:
            return b""

        def get() -> bytes:
            span = f"bytes={start}-{stop - 1}"
            body: Any = self.client.get_object(Bucket=self.bucket, Key=self._full(key), Range=span)["Body"]
            try:  # at most the range, even from a server that ignores Range and sends the whole object
                return bytes(body.read(stop - start))
            finally:
                body.close()

        try:
            return self._call("ranged get", key, get, may_be_missing=True, refused=frozenset({"InvalidRange"}))
        except ValueError:  # the range starts past the end: nothing there
            return b""

    def size(self, key: str) -> int:
        """HEAD the object: its size without reading it."""
        head = self._call(
            "head", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._full(key)), may_be_missing=True
        )
        return int(head["ContentLength"])

    def download(self, key: str, dest: Path) -> None:
        """Managed download to ``dest``."""
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        self._call(
            "download",
            key,
            lambda: self.client.download_file(self.bucket, self._full(key), str(dest), Config=self.transfer),
            may_be_missing=True,
        )

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (paginated LIST), relative to the store's prefix."""
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0

        def collect() -> list[str]:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            return sorted(item["Key"][strip:] for page in pages for item in page.get("Contents", []))

        return self._call("list", prefix, collect)

    def list_top(self, limit: int) -> list[str]:
        """The objects directly under the store's prefix (LIST with a ``/`` delimiter), at most ``limit``."""
        full = f"{self.prefix}/" if self.prefix else ""

        def collect() -> list[str]:
            found: list[str] = []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/", PaginationConfig={"PageSize": 1000}
            )
            for page in pages:
                found += [item["Key"][len(full) :] for item in page.get("Contents", [])]
                if len(found) >= limit:
                    break
            return sorted(found[:limit])

        return self._call("list", full, collect)

    def delete(self, keys: list[str]) -> None:
        """Batch DELETE (1000 keys per request)."""
        for start in range(0, len(keys), 1000):
            self._delete_batch(keys[start : start + 1000])

    def _delete_batch(self, keys: list[str]) -> None:
        objects: Any = [{"Key": self._full(k)} for k in keys]
        self._call(
            "delete",
            keys[0],
            lambda: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}),
        )

    def within(self, folder: str) -> S3Store:
        """The objects under ``folder`` as a store of their own (the same client and settings)."""
        inner = copy.copy(self)
        inner.prefix = self._full(folder.rstrip("/"))
        return inner

    def presigned_url(self, key: str, *, expires_s: int = 3600) -> str | None:
        """A SigV4 presigned GET URL valid for ``expires_s`` seconds (signed locally, no request)."""
        return self._call(
            "presign",
            key,
            lambda: self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._full(key)}, ExpiresIn=expires_s
            ),
        )

    def start_multipart(self, key: str) -> str:
        """Begin a multipart upload to ``key`` (parts PUT through presigned URLs); returns its id."""
        created = self._call(
            "create-multipart",
            key,
            lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=self._full(key)),
        )
        return str(created["UploadId"])

    def presign_part(self, key: str, upload_id: str, part_number: int, *, expires_s: int = 3600) -> str:
        """A presigned PUT URL for one part of a multipart upload (signed locally, no request)."""
        params = {"Bucket": self.bucket, "Key": self._full(key), "UploadId": upload_id, "PartNumber": part_number}
        presign = self.client.generate_presigned_url
        return self._call("presign", key, lambda: presign("upload_part", Params=params, ExpiresIn=expires_s))

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        """Assemble the parts ``(part number, ETag)``; ValueError when S3 refuses them (wrong or
        missing parts, a part too small, an unknown or finished upload)."""
        document: Any = {"Parts": [{"PartNumber": number, "ETag": etag} for number, etag in parts]}
        self._call(
            "complete-multipart",
            key,
            lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self._full(key), UploadId=upload_id, MultipartUpload=document
            ),
            refused=_BAD_PARTS,
        )

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop a multipart upload and the parts it holds; ValueError for an unknown upload."""
        self._call(
            "abort-multipart",
            key,
            lambda: self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._full(key), UploadId=upload_id),
            refused=_BAD_PARTS,
        )

    def local_path(self, key: str) -> Path | None:
        """Objects in S3 have no local path."""
        return None

    def check(self) -> None:
        """HEAD the bucket."""
        self._call("head-bucket", self.prefix, lambda: self.client.head_bucket(Bucket=self.bucket))
