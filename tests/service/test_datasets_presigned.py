"""Presigned multipart uploads against a real S3 endpoint (moto's server): parts go straight to S3,
completion validates and registers, and the temporary object never outlives the completion."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
from api_helpers import Api

from jobs.keys import authenticate
from jobs.models import Dataset
from storage.s3 import S3Store


def stored_key(api: Api, dataset_id: int) -> str:
    """The key the dataset's row records."""
    dataset = api.session.get(Dataset, dataset_id)
    assert dataset is not None
    return dataset.key


def npz_bytes(n: int = 40, width: int = 4) -> bytes:
    """A valid dataset file of about ``n * width * 8`` bytes."""
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    np.savez(buffer, wide=rng.normal(size=(n, width)), narrow=rng.normal(size=(n, 3)), label=np.arange(n) % 2)
    return buffer.getvalue()


def start(api: Api, token: str, size: int) -> Any:
    """Ask for an upload of ``size`` bytes."""
    return api.client.post("/v1/datasets/uploads", json={"name": "big", "size_bytes": size}, headers=api.auth(token))


def send_parts(plan: dict[str, Any], payload: bytes) -> list[dict[str, Any]]:
    """PUT each part to its presigned URL, as a client would; returns the parts to complete with."""
    done = []
    size = plan["part_size"]
    for part in plan["parts"]:
        chunk = payload[(part["part_number"] - 1) * size : part["part_number"] * size]
        answer = httpx.put(part["url"], content=chunk)
        assert answer.status_code == 200, answer.text
        done.append({"part_number": part["part_number"], "etag": answer.headers["ETag"]})
    return done


def complete(api: Api, token: str, upload_id: int, parts: list[dict[str, Any]]) -> Any:
    """POST the parts' ETags."""
    url = f"/v1/datasets/uploads/{upload_id}/complete"
    return api.client.post(url, json={"parts": parts}, headers=api.auth(token))


def test_a_two_part_upload_is_validated_and_registered(api: Api, store: S3Store) -> None:
    token = api.new_key()
    owner = authenticate(api.session, token=token)
    assert owner is not None
    payload = npz_bytes(n=1200, width=1000)  # about 9.6 MB: two parts of at least 8 MiB and the rest
    plan = start(api, token, len(payload)).json()
    assert plan["part_size"] == 8 << 20 and [p["part_number"] for p in plan["parts"]] == [1, 2]
    assert all("Signature" in part["url"] for part in plan["parts"])
    assert store.list_keys("uploads/") == []  # nothing exists until the parts are assembled
    parts = send_parts(plan, payload)
    wrong = complete(api, token, plan["id"], [{**parts[0], "etag": '"0000"'}, parts[1]])
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["path"] == "parts"
    response = complete(api, token, plan["id"], parts)  # the upload stayed open for another try
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["size_bytes"] == len(payload) and dataset["modalities"]["wide"] == {
        "shape": [1000],
        "dtype": "float64",
    }
    assert store.list_keys("uploads/") == []
    [key] = store.list_keys("datasets/")
    assert key == stored_key(api, dataset["id"]) and key.startswith(f"datasets/{owner.id}/")
    assert store.get_bytes(key) == payload
    assert complete(api, token, plan["id"], parts).status_code == 404  # done is done


def test_a_bad_file_is_refused_and_its_temporary_object_deleted(api: Api, store: S3Store) -> None:
    token = api.new_key()
    payload = b"PK" + b"not an npz" * 100
    plan = start(api, token, len(payload)).json()
    response = complete(api, token, plan["id"], send_parts(plan, payload))
    assert response.status_code == 422
    assert response.json()["errors"][0] == {"path": "file", "message": response.json()["errors"][0]["message"]}
    assert "not a valid .npz file" in response.json()["detail"]
    assert store.list_keys("") == []
    assert complete(api, token, plan["id"], [{"part_number": 1, "etag": "x"}]).status_code == 404


def test_sizes_are_checked_when_asked_and_again_before_reading(api: Api, store: S3Store) -> None:
    api.app.state.settings = api.app.state.settings.model_copy(update={"max_dataset_bytes": 4096})
    token = api.new_key()
    assert start(api, token, 4097).status_code == 413
    plan = start(api, token, 1000).json()  # then sends more than it said
    response = complete(api, token, plan["id"], send_parts({**plan, "part_size": 10_000}, b"PK" + b"x" * 5000))
    assert response.status_code == 413
    assert store.list_keys("") == []


def test_another_owner_cannot_complete_or_abort_and_abort_drops_the_parts(api: Api, store: S3Store) -> None:
    alice, bob = api.new_key(), api.new_key()
    payload = npz_bytes()
    plan = start(api, alice, len(payload)).json()
    parts = send_parts(plan, payload)
    url = f"/v1/datasets/uploads/{plan['id']}"
    assert complete(api, bob, plan["id"], parts).status_code == 404
    assert api.client.delete(url, headers=api.auth(bob)).status_code == 404
    assert api.client.delete(url, headers=api.auth(alice)).status_code == 204
    assert complete(api, alice, plan["id"], parts).status_code == 404
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    assert store.list_keys("") == []


def test_a_direct_upload_lands_in_s3_under_the_owner(api: Api, store: S3Store) -> None:
    token = api.new_key()
    owner = authenticate(api.session, token=token)
    assert owner is not None
    payload = npz_bytes()
    response = api.client.post("/v1/datasets", content=payload, headers=api.auth(token))
    assert response.status_code == 201
    assert store.list_keys("") == [stored_key(api, response.json()["id"])]
    assert stored_key(api, response.json()["id"]).startswith(f"datasets/{owner.id}/")


def test_a_huge_file_gets_bigger_parts_not_more_than_a_thousand(api: Api, store: S3Store) -> None:
    api.app.state.settings = api.app.state.settings.model_copy(update={"max_dataset_bytes": 1 << 40})
    size = 20 << 30
    plan = start(api, api.new_key(), size).json()
    assert len(plan["parts"]) == 1000 and plan["part_size"] * 1000 >= size > plan["part_size"] * 999
