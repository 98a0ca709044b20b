"""The SDK's dataset calls against a live server (local store): upload streamed from disk, list,
get, delete; presigned uploads fall back to a direct one where the server has no S3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mmkd_client import Client, Conflict, MmkdError, NotFound, ValidationFailed
from mmkd_client import client as client_module


@pytest.fixture
def client(api_server: Any) -> Iterator[Client]:
    """A client for a fresh owner."""
    with Client(api_server.url, api_server.new_key(), backoff=0.01) as sdk:
        yield sdk


def npz(path: Path) -> Path:
    """A small valid dataset file."""
    np.savez(path, a=np.zeros((20, 3)), b=np.ones((20, 2, 4), dtype=np.float32), label=np.arange(20) % 2)
    return path


def test_upload_list_get_delete(client: Client, tmp_path: Path) -> None:
    first = client.upload_dataset(npz(tmp_path / "my data (v1).npz"))
    second = client.upload_dataset(npz(tmp_path / "two.npz"), name="second")
    assert first.name == "my_data__v1_.npz" and second.name == "second"
    assert first.modalities["b"].shape == [2, 4] and first.label is not None and first.label.classes == 2
    assert [d.id for d in client.datasets(page_size=1)] == [second.id, first.id]
    assert client.dataset(first.id) == first
    client.delete_dataset(first.id)
    with pytest.raises(NotFound):
        client.dataset(first.id)
    assert [d.id for d in client.datasets()] == [second.id]


def test_a_bad_file_raises_validation_failed_naming_the_array(client: Client, tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", a=np.full((20, 3), np.inf), b=np.zeros((20, 2)), label=np.arange(20) % 2)
    with pytest.raises(ValidationFailed) as failed:
        client.upload_dataset(tmp_path / "bad.npz")
    assert failed.value.paths == ["file"] and "modality 'a' has non-finite values" in failed.value.detail


def test_presigned_uploads_fall_back_to_direct_without_s3(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = npz(tmp_path / "d.npz")
    with pytest.raises(Conflict, match="need an S3 store"):
        client.upload_dataset(path, multipart=True)
    monkeypatch.setattr(client_module, "MULTIPART_THRESHOLD", 10)
    assert client.upload_dataset(path).n_samples == 20
    (tmp_path / "shards").mkdir()
    with pytest.raises(MmkdError, match="holds no .npz shards and no .npy arrays"):
        client.upload_dataset(tmp_path / "shards")
    npz(tmp_path / "shards" / "part-0.npz")
    with pytest.raises(Conflict, match="need an S3 store"):  # a folder of shards goes only in presigned parts
        client.upload_dataset(tmp_path / "shards")
