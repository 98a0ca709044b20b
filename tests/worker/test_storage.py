"""Both artifact stores behave alike; the S3 one is exercised over HTTP against moto's server."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from core.errors import StorageError
from storage.checkpoints import StorageCheckpointStore
from storage.s3 import S3Store
from storage.store import ArtifactStore, LocalStore, ObjectTooLarge, is_allowed, open_store, read_uri


@pytest.fixture
def bucket(moto_server) -> str:
    name = f"mmkd-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server.endpoint_url).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path) -> Iterator[ArtifactStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "artifacts")
    else:
        server = request.getfixturevalue("moto_server")
        bucket = request.getfixturevalue("bucket")
        yield open_store(f"s3://{bucket}/some/prefix", endpoint_url=server.endpoint_url, max_attempts=2)


def test_put_get_list_delete(store: ArtifactStore, tmp_path: Path) -> None:
    stored = store.put_bytes("jobs/1/a.txt", b"hello")
    assert (stored.key, stored.size) == ("jobs/1/a.txt", 5)
    source = tmp_path / "b.bin"
    source.write_bytes(b"x" * 1000)
    assert store.put_file("jobs/1/sub/b.bin", source).size == 1000
    store.put_bytes("jobs/2/c.txt", b"other job")
    assert store.list_keys("jobs/1/") == ["jobs/1/a.txt", "jobs/1/sub/b.bin"]
    assert store.get_bytes("jobs/1/a.txt") == b"hello"
    store.download("jobs/1/sub/b.bin", tmp_path / "out" / "b.bin")
    assert (tmp_path / "out" / "b.bin").read_bytes() == b"x" * 1000
    store.delete(["jobs/1/a.txt", "jobs/1/never-existed"])
    assert store.list_keys("jobs/1/") == ["jobs/1/sub/b.bin"]
    with pytest.raises(FileNotFoundError):
        store.get_bytes("jobs/1/a.txt")
    store.check()


def test_ranged_reads_return_exactly_the_asked_bytes(store: ArtifactStore) -> None:
    payload = bytes(range(256)) * 4
    store.put_bytes("data/x.npy", payload)
    assert store.get_range("data/x.npy", 0, 10) == payload[:10]
    assert store.get_range("data/x.npy", 300, 777) == payload[300:777]
    assert store.get_range("data/x.npy", 1000, 2000) == payload[1000:]  # fewer bytes at the end
    assert store.get_range("data/x.npy", 5, 5) == b""
    with pytest.raises(FileNotFoundError):
        store.get_range("data/missing.npy", 0, 10)
    assert store.get_range("data/x.npy", 5000, 6000) == b""  # past the end


def test_list_top_sees_only_the_folders_own_files_and_stops_at_the_limit(store: ArtifactStore) -> None:
    for name in ("b.npz", "a.npz", "c.npz", "deeper/d.npz"):
        store.put_bytes(f"folder/{name}", b"x")
    folder = store.within("folder/")
    assert folder.list_top(10) == ["a.npz", "b.npz", "c.npz"]
    assert len(folder.list_top(2)) == 2
    assert store.within("nothing-here").list_top(10) == []


def test_a_store_within_a_folder_maps_its_keys_under_that_folder(store: ArtifactStore) -> None:
    inner = store.within("outer/inner/")
    inner.put_bytes("x.npy", b"inside")
    assert store.get_bytes("outer/inner/x.npy") == b"inside"
    assert inner.within("deeper").list_top(10) == [] and inner.size("x.npy") == 6
    for folder in ("", "/abs", "a/../b", "../up"):
        with pytest.raises(ValueError):
            store.within(folder)


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
def test_rejects_unsafe_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        LocalStore(tmp_path).put_bytes(key, b"")


def test_checkpoint_store_keeps_last_and_loads_newest(store: ArtifactStore) -> None:
    checkpoints = StorageCheckpointStore(store, "job-7", keep_last=2)
    assert checkpoints.load_latest() is None
    for step in (5, 10, 100, 15):
        assert checkpoints.save(step, f"state {step}".encode()) == f"jobs/job-7/checkpoints/step-{step}.pt"
    assert checkpoints.load_latest() == (100, b"state 100")
    assert store.list_keys("jobs/job-7/") == [
        "jobs/job-7/checkpoints/step-100.pt",
        "jobs/job-7/checkpoints/step-15.pt",
    ]


def test_presigned_url_downloads_the_object(moto_server, bucket: str) -> None:
    store = S3Store(bucket, "p", endpoint_url=moto_server.endpoint_url)
    store.put_bytes("jobs/1/student/model.pt", b"weights")
    url = store.presigned_url("jobs/1/student/model.pt", expires_s=60)
    assert url is not None and "Signature" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"weights"
    assert LocalStore(Path("/nonexistent")).presigned_url("x") is None


def test_large_file_goes_multipart(moto_server, bucket: str, tmp_path: Path) -> None:
    store = S3Store(
        bucket,
        endpoint_url=moto_server.endpoint_url,
        multipart_threshold=5 << 20,
        multipart_chunksize=5 << 20,
    )
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (6 << 12))  # 6 MiB: two parts
    stored = store.put_file("jobs/1/big.bin", big)
    head = store.client.head_object(Bucket=bucket, Key="jobs/1/big.bin")
    assert head["ContentLength"] == big.stat().st_size == stored.size
    assert head["ETag"].strip('"').endswith("-2")  # S3's multipart ETag: md5-of-md5s "-" part count
    assert store.get_bytes("jobs/1/big.bin") == big.read_bytes()


def test_outage_raises_storage_error_after_retries(moto_server, bucket: str) -> None:
    store = S3Store(bucket, endpoint_url=moto_server.endpoint_url, max_attempts=3, timeout_s=2)
    moto_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(StorageError, match="after retries"):
            store.put_bytes("jobs/1/a.txt", b"x")
        assert time.monotonic() - started < 30
        with pytest.raises(StorageError):
            store.check()
    finally:
        moto_server.start()
    store.client.create_bucket(Bucket=bucket)  # moto keeps its state in memory: recreate the bucket
    store.put_bytes("jobs/1/a.txt", b"back")  # the same client recovers once the endpoint is back
    assert store.get_bytes("jobs/1/a.txt") == b"back"


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    spaced = tmp_path / "with space"
    assert open_store(spaced.as_uri()).root == spaced.resolve()  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        open_store("s3:///no-bucket")
    with pytest.raises(ValueError):
        open_store("gs://bucket/x")


def test_size_without_reading_and_missing_objects(store: ArtifactStore) -> None:
    store.put_bytes("datasets/1/d.npz", b"z" * 321)
    assert store.size("datasets/1/d.npz") == 321
    with pytest.raises(FileNotFoundError):
        store.size("datasets/1/none.npz")


def test_read_uri_checks_the_size_before_reading(tmp_path: Path, moto_server, bucket: str) -> None:
    local = tmp_path / "d.npz"
    local.write_bytes(b"k" * 100)
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint_url)
    s3.put_object(Bucket=bucket, Key="in/d.npz", Body=b"k" * 100)
    for uri in (str(local), local.as_uri(), f"s3://{bucket}/in/d.npz"):
        options = {"endpoint_url": moto_server.endpoint_url, "max_attempts": 1}
        assert read_uri(uri, max_bytes=100, **options) == b"k" * 100
        with pytest.raises(ObjectTooLarge, match="100 bytes, over the limit of 99"):
            read_uri(uri, max_bytes=99, **options)
    with pytest.raises(FileNotFoundError):  # another bucket answers like a missing object: no oracle
        read_uri("s3://no-such-bucket-here/k.npz", endpoint_url=moto_server.endpoint_url, max_attempts=1)


def test_allow_list_matches_whole_segments_and_resolved_paths(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "link.npz").symlink_to(tmp_path / "secret.npz")
    prefixes = [str(data), "s3://shared/public/"]
    assert is_allowed(str(data / "x.npz"), prefixes) and is_allowed((data / "a" / "b.npz").as_uri(), prefixes)
    assert is_allowed("s3://shared/public/x.npz", prefixes)
    for uri in (
        str(data / "link.npz"),  # a link that leaves the folder
        f"{data}/../secret.npz",
        str(data),
        f"{data}-other/x.npz",
        "s3://shared/publicity.npz",
        "s3://shared/x.npz",
        "s3://other/public/x.npz",
        "https://example.com/x.npz",
    ):
        assert not is_allowed(uri, prefixes), uri
    assert not is_allowed(str(data / "x.npz"), [])
