"""Datasets through the API on a local store: upload validated once (a bad file is a 422 naming the
array, an oversized one a 413 before it is read), a summary shown, isolation between owners,
pagination, delete, and specs that name a dataset by id."""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from api_helpers import SPEC, Api

from jobs import datasets as datasets_service
from jobs.keys import authenticate
from jobs.models import Dataset
from service.datasets import router as datasets_router

#: Tests that touch queries (JSON paths, row locks, keyset pages) run on both backends.
both_backends = pytest.mark.parametrize("backend", ["pg", "sqlite"], indirect=True)


def npz_bytes(**arrays: Any) -> bytes:
    """An .npz file's bytes."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def good_arrays(n: int = 40) -> dict[str, Any]:
    """Two modalities (a vector and a sequence) with a secret-looking name, and three classes."""
    rng = np.random.default_rng(0)
    return {
        "alicevision": rng.normal(size=(n, 4)).astype(np.float32),
        "alicesensor": rng.normal(size=(n, 2, 8)),
        "label": np.arange(n) % 3,
    }


def upload(api: Api, token: str, payload: bytes, name: str = "mine") -> Any:
    """POST the file's bytes as the body."""
    return api.client.post("/v1/datasets", params={"name": name}, content=payload, headers=api.auth(token))


def stored_files(api: Api) -> list[Path]:
    """Every file in the test's local store (temporary ones included)."""
    root = Path(api.app.state.settings.resolved_storage_url.removeprefix("file://"))
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def spec_on(dataset_id: int, primary: list[str], auxiliary: list[str], **extra: Any) -> dict[str, Any]:
    """The shared spec, trained on an uploaded dataset."""
    return {**SPEC, "dataset": {"id": dataset_id, "primary": primary, "auxiliary": auxiliary}, **extra}


@both_backends
def test_upload_validates_summarises_and_stores_under_the_owner(api: Api) -> None:
    token = api.new_key("alice")
    payload = npz_bytes(**good_arrays(), split=np.array(["train"] * 30 + ["val"] * 4 + ["test"] * 6))
    response = upload(api, token, payload, name="alice-set.v1")
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["Location"] == f"/v1/datasets/{body['id']}"
    assert body["name"] == "alice-set.v1" and body["n_samples"] == 40
    assert body["modalities"] == {
        "alicesensor": {"shape": [2, 8], "dtype": "float64"},
        "alicevision": {"shape": [4], "dtype": "float32"},
    }
    assert body["label"] == {"kind": "classes", "shape": [], "labelled": 40, "classes": 3}
    assert body["splits"] == {"train": 30, "val": 4, "test": 6}
    assert (body["size_bytes"], body["sha256"]) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert "key" not in body
    owner = authenticate(api.session, token=token)
    assert owner is not None
    [stored] = stored_files(api)
    row = api.session.get(Dataset, body["id"])
    assert row is not None and row.key.startswith(f"datasets/{owner.id}/") and row.key.endswith(".npz")
    assert stored.as_posix().endswith(row.key) and stored.read_bytes() == payload
    assert api.client.get(f"/v1/datasets/{body['id']}", headers=api.auth(token)).json() == body


def test_labels_without_classes_and_files_without_labels(api: Api) -> None:
    token = api.new_key()
    arrays = good_arrays()
    arrays["label"] = np.linspace(0.0, 1.0, 40)
    assert upload(api, token, npz_bytes(**arrays)).json()["label"]["kind"] == "continuous"
    arrays["label"] = (np.arange(80).reshape(40, 2) % 3 == 0).astype(np.float32)
    multilabel = {"kind": "multilabel", "shape": [2], "labelled": 40, "classes": None}
    assert upload(api, token, npz_bytes(**arrays)).json()["label"] == multilabel
    del arrays["label"]
    assert upload(api, token, npz_bytes(**arrays)).json()["label"] is None


def _with(**changes: Any) -> Callable[[], bytes]:
    def build() -> bytes:
        arrays = good_arrays()
        arrays.update(changes)
        return npz_bytes(**{name: value for name, value in arrays.items() if value is not None})

    return build


def _non_finite() -> bytes:
    arrays = good_arrays()
    arrays["alicesensor"][3, 1, 2] = np.nan
    return npz_bytes(**arrays)


def _not_an_array() -> bytes:
    buffer = io.BytesIO(npz_bytes(**good_arrays()))
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("notes.txt", "hello")
    return buffer.getvalue()


def _compressed_bomb() -> bytes:
    buffer = io.BytesIO()
    arrays = good_arrays()
    np.savez_compressed(buffer, **arrays, zeros=np.zeros((40, 200_000), dtype=np.float32))  # 32 MB of zeros
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (_non_finite, "modality 'alicesensor' has non-finite values in 1 samples"),
        (_with(alicevision=np.zeros((39, 4))), "modalities have different sample counts"),
        (_with(alicevision=np.array(["x"] * 40)), "modality 'alicevision' must be numeric"),
        (_with(alicevision=np.zeros(40)), "modality 'alicevision' must be 2-D (N, F) or 3-D (N, C, L)"),
        (_with(alicevision=np.array([{"x": 1}] * 40, dtype=object)), "without pickled objects"),
        (_with(label=np.arange(39)), "array 'label' has 39 samples, the modalities have 40"),
        (_with(label=np.array(5)), "array 'label' is 0-d; expected one value per sample"),
        (_with(label=np.arange(40) + 20_000), "array 'label' has class id 20039; the limit is 10000 classes"),
        (_with(label=np.full(40, -1)), "array 'label' has no labelled sample"),
        (_with(split=np.array(["train"] * 40)), "array 'split' names no test sample"),
        (_with(split=np.array(["nope"] * 40)), "array 'split' must be (N,) with values in"),
        (_with(**{"bad name": np.zeros((40, 2))}), "array 'bad name' is not a modality name"),
        (_with(alicevision=None, alicesensor=None), "holds no modality array"),
        (_not_an_array, "member 'notes.txt' is not an .npy array"),
        (lambda: b"PK\x03\x04 not really a zip", "not a valid .npz file"),
        (lambda: b"#!/bin/sh\nrm -rf /", "not a valid .npz file (not a zip archive)"),
        (lambda: b"", "not a valid .npz file (not a zip archive)"),
        (_compressed_bomb, "the arrays take over 2000000 bytes once decompressed"),
    ],
)
def test_a_bad_file_is_a_422_naming_the_array_and_nothing_is_kept(
    api: Api, build: Callable[[], bytes], expected: str
) -> None:
    api.app.state.settings = api.app.state.settings.model_copy(update={"max_dataset_bytes": 2_000_000})
    token = api.new_key()
    rows = api.session.query(Dataset).count()  # other tests may have committed theirs
    response = upload(api, token, build())
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["path"] == "file"
    assert error["message"].startswith("the uploaded file: ") and expected in error["message"]
    assert stored_files(api) == []
    assert api.session.query(Dataset).count() == rows


def test_an_oversized_body_is_a_413_before_it_is_read(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api.app.state.settings = api.app.state.settings.model_copy(update={"max_dataset_bytes": 4096})
    token = api.new_key()
    rows = api.session.query(Dataset).count()  # other tests may have committed theirs

    async def never(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("the body was read")

    with monkeypatch.context() as patch:
        patch.setattr(datasets_router, "spool", never)
        declared = upload(api, token, b"PK" + b"\0" * 5000)
    assert declared.status_code == 413
    assert "at most 4096 bytes (MMKD_MAX_DATASET_BYTES)" in declared.json()["detail"]

    def chunks() -> Any:  # no Content-Length: the cap applies while streaming
        for _ in range(10):
            yield b"\0" * 1000

    streamed = api.client.post("/v1/datasets", content=chunks(), headers=api.auth(token))
    assert streamed.status_code == 413
    assert stored_files(api) == [] and api.session.query(Dataset).count() == rows


def test_spool_stops_at_the_first_chunk_past_the_limit(tmp_path: Path) -> None:
    consumed = []

    async def body() -> AsyncIterator[bytes]:
        for number in range(1000):
            consumed.append(number)
            yield b"x" * 100

    with pytest.raises(datasets_service.PayloadTooLargeError):
        asyncio.run(datasets_router.spool(body(), tmp_path / "f", max_bytes=250))
    assert consumed == [0, 1, 2]


def test_the_dataset_body_limit_is_not_the_json_body_limit(api: Api) -> None:
    payload = npz_bytes(**good_arrays(n=3000))
    assert len(payload) > api.app.state.settings.max_body_bytes
    assert upload(api, api.new_key(), payload).status_code == 201
    big_json = {**SPEC, "name": "x" * 100, "padding": "y" * 300_000}
    assert api.client.post("/v1/jobs", json=big_json, headers=api.auth(api.new_key())).status_code == 413


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "", " lead", "x" * 201, "nul\x00"])
def test_hostile_names_are_refused(api: Api, name: str) -> None:
    response = upload(api, api.new_key(), npz_bytes(**good_arrays()), name=name)
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "query.name"


@both_backends
def test_another_owner_sees_nothing_of_a_dataset(api: Api) -> None:
    alice, bob = api.new_key("alice"), api.new_key("bob")
    mine = upload(api, alice, npz_bytes(**good_arrays())).json()
    missing_id = mine["id"] + 1000
    for method in ("get", "delete"):
        theirs = getattr(api.client, method)(f"/v1/datasets/{mine['id']}", headers=api.auth(bob))
        missing = getattr(api.client, method)(f"/v1/datasets/{missing_id}", headers=api.auth(bob))
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["detail"] == f"no dataset {mine['id']}"
        assert {**theirs.json(), "detail": "", "instance": ""} == {**missing.json(), "detail": "", "instance": ""}
    assert api.client.get("/v1/datasets", headers=api.auth(bob)).json() == {"items": [], "next_cursor": None}
    probes = [
        spec_on(mine["id"], ["alicevision"], ["alicesensor"]),
        spec_on(mine["id"], ["nothing"], ["else"]),
        spec_on(missing_id, ["alicevision"], ["alicesensor"]),
    ]
    answers = [api.submit(bob, probe) for probe in probes]
    assert [answer.status_code for answer in answers] == [422, 422, 422]
    assert all(answer.json()["errors"] == answers[0].json()["errors"] for answer in answers)
    assert answers[0].json()["errors"] == [{"path": "dataset.id", "message": datasets_service.NO_SUCH_DATASET}]
    for answer in answers:  # nothing of alice's: no modality names, size, checksum or key
        for secret in ("alicesensor", "alicevision", mine["sha256"], str(mine["size_bytes"]), "datasets/"):
            assert secret not in answer.text
    assert api.client.get(f"/v1/datasets/{mine['id']}", headers=api.auth(alice)).status_code == 200


@both_backends
def test_a_spec_must_name_modalities_the_dataset_has(api: Api) -> None:
    token = api.new_key()
    dataset = upload(api, token, npz_bytes(**good_arrays())).json()
    assert api.submit(token, spec_on(dataset["id"], ["alicevision"], ["alicesensor"])).status_code == 201
    response = api.submit(token, spec_on(dataset["id"], ["alicevision", "audio"], ["depth"]))
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "path": "dataset.primary",
            "message": f"modality ['audio'] is not in dataset {dataset['id']}; it has ['alicesensor', 'alicevision']",
        },
        {
            "path": "dataset.auxiliary",
            "message": f"modality ['depth'] is not in dataset {dataset['id']}; it has ['alicesensor', 'alicevision']",
        },
    ]
    arrays = good_arrays()
    del arrays["label"]
    unlabelled = upload(api, token, npz_bytes(**arrays)).json()
    refused = api.submit(token, spec_on(unlabelled["id"], ["alicevision"], ["alicesensor"]))
    assert refused.status_code == 422 and refused.json()["errors"][0]["path"] == "task"


@both_backends
def test_pages_cover_every_dataset_once_newest_first(api: Api) -> None:
    token = api.new_key()
    payload = npz_bytes(**good_arrays())
    ids = [upload(api, token, payload).json()["id"] for _ in range(5)]
    upload(api, api.new_key(), payload)  # another owner's never shows
    pages, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = api.client.get("/v1/datasets", params=params, headers=api.auth(token)).json()
        pages.append([item["id"] for item in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == [sorted(ids, reverse=True)[i : i + 2] for i in (0, 2, 4)]
    jobs_cursor = api.client.get("/v1/jobs", params={"limit": 1}, headers=api.auth(token)).json()["next_cursor"]
    for bad in ("nonsense", "ZDow", jobs_cursor or "ajox"):
        answer = api.client.get("/v1/datasets", params={"cursor": bad}, headers=api.auth(token))
        assert answer.status_code == 422 and answer.json()["title"] == "Invalid cursor"


@both_backends
def test_delete_removes_row_and_object_unless_a_job_still_needs_it(api: Api) -> None:
    token = api.new_key()
    dataset = upload(api, token, npz_bytes(**good_arrays())).json()
    url = f"/v1/datasets/{dataset['id']}"
    job = api.submit(token, spec_on(dataset["id"], ["alicevision"], ["alicesensor"])).json()
    refused = api.client.delete(url, headers=api.auth(token))
    assert refused.status_code == 409 and f"jobs [{job['id']}]" in refused.json()["detail"]
    assert len(stored_files(api)) == 1
    api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.auth(token))
    assert api.client.delete(url, headers=api.auth(token)).status_code == 204
    assert api.client.get(url, headers=api.auth(token)).status_code == 404
    assert stored_files(api) == []
    assert api.client.delete(url, headers=api.auth(token)).status_code == 404
    gone = api.submit(token, spec_on(dataset["id"], ["alicevision"], ["alicesensor"]))
    assert gone.status_code == 422 and gone.json()["errors"][0]["path"] == "dataset.id"


def test_presigned_uploads_need_an_s3_store(api: Api) -> None:
    token = api.new_key()
    response = api.client.post("/v1/datasets/uploads", json={"name": "big", "size_bytes": 10}, headers=api.auth(token))
    assert response.status_code == 409
    assert "need an S3 store" in response.json()["detail"] and "POST /v1/datasets" in response.json()["detail"]
