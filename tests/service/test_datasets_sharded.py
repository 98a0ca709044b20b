"""Sharded datasets uploaded through presigned parts against a real S3 endpoint (moto's server): each
file of a folder of shards is a multipart upload of its own, straight into the dataset's folder;
completion checks the folder as a job's first pass does, and a folder that fails is deleted whole."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from api_helpers import Api

from core.data.shards import write_shards
from core.errors import StorageError
from jobs.keys import authenticate
from jobs.models import Dataset, DatasetUpload
from jobs.orm import utcnow
from storage.s3 import S3Store


def folder_of_shards(folder: Path, *, layout: str = "npz", n: int = 60) -> dict[str, bytes]:
    """A valid sharded dataset (3 shards of 20 rows, or one .npy per array): {file name: bytes}."""
    rng = np.random.default_rng(3)
    arrays = {
        "audio": rng.normal(size=(n, 6)).astype(np.float32),
        "video": rng.normal(size=(n, 2, 5)),
        "label": np.arange(n) % 3,
    }
    paths = write_shards(arrays, folder, rows_per_shard=20, layout=layout)  # type: ignore[arg-type]
    return {path.name: path.read_bytes() for path in paths}


def start(api: Api, token: str, files: dict[str, bytes] | list[dict[str, Any]]) -> httpx.Response:
    """Ask for a sharded upload of ``files``."""
    wanted = files if isinstance(files, list) else [{"name": k, "size_bytes": len(v)} for k, v in files.items()]
    return api.client.post("/v1/datasets/uploads", json={"name": "shards", "files": wanted}, headers=api.auth(token))


def send(plan: dict[str, Any], files: dict[str, bytes]) -> list[dict[str, Any]]:
    """PUT every part of every file, as a client would; the completion's ``files``."""
    sent = []
    size = plan["part_size"]
    for entry in plan["files"]:
        payload, parts = files[entry["name"]], []
        for part in entry["parts"]:
            answer = httpx.put(
                part["url"], content=payload[(part["part_number"] - 1) * size : part["part_number"] * size]
            )
            assert answer.status_code == 200, answer.text
            parts.append({"part_number": part["part_number"], "etag": answer.headers["ETag"]})
        sent.append({"name": entry["name"], "parts": parts})
    return sent


def complete(api: Api, token: str, upload_id: int, body: dict[str, Any]) -> httpx.Response:
    """POST the completion."""
    return api.client.post(f"/v1/datasets/uploads/{upload_id}/complete", json=body, headers=api.auth(token))


def test_a_folder_of_npz_shards_is_registered_in_place_and_trains_by_id(
    api: Api, store: S3Store, tmp_path: Path
) -> None:
    token = api.new_key()
    owner = authenticate(api.session, token=token)
    assert owner is not None
    files = folder_of_shards(tmp_path / "shards")
    plan = start(api, token, files).json()
    assert plan["parts"] == [] and [f["name"] for f in plan["files"]] == sorted(files)
    assert store.list_keys("") == []  # nothing exists until each file's parts are assembled
    response = complete(api, token, plan["id"], {"files": send(plan, files)})
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["shards"] == {"layout": "npz", "files": 3}
    assert dataset["n_samples"] == 60 and dataset["size_bytes"] == sum(map(len, files.values()))
    assert dataset["modalities"] == {
        "audio": {"shape": [6], "dtype": "float32"},
        "video": {"shape": [2, 5], "dtype": "float64"},
    }
    assert dataset["label"] == {"kind": "classes", "shape": [], "labelled": 60, "classes": 3}
    row = api.session.get(Dataset, dataset["id"])
    assert row is not None and row.key.startswith(f"datasets/{owner.id}/") and row.key.endswith("/")
    assert store.list_keys("") == [row.key + name for name in sorted(files)]  # in place: no copy, no temporary
    assert api.client.get(f"/v1/datasets/{dataset['id']}", headers=api.auth(token)).json() == dataset
    job = {
        "name": "on-shards",
        "task": "classification",
        "dataset": {"id": dataset["id"], "primary": ["audio"], "auxiliary": ["depth"]},
        "method": {"name": "student_only"},
    }
    refused = api.client.post("/v1/jobs", json=job, headers=api.auth(token))
    assert refused.status_code == 422 and refused.json()["errors"][0]["path"] == "dataset.auxiliary"
    job["dataset"]["auxiliary"] = ["video"]  # type: ignore[index]
    for refusal, path in (({"method": {"name": "mfh_kd"}}, "method.name"), ({"kind": "probe"}, "kind")):
        streamed = api.client.post("/v1/jobs", json={**job, **refusal}, headers=api.auth(token))
        assert streamed.status_code == 422 and streamed.json()["errors"][0]["path"] == path, streamed.text
        assert "whole training split" in streamed.json()["errors"][0]["message"]
    assert api.client.post("/v1/jobs", json=job, headers=api.auth(token)).status_code == 201
    assert api.client.delete(f"/v1/datasets/{dataset['id']}", headers=api.auth(token)).status_code == 409  # queued job


def test_the_npy_layout_and_part_urls_that_die_with_the_completion(api: Api, store: S3Store, tmp_path: Path) -> None:
    token = api.new_key()
    files = folder_of_shards(tmp_path / "arrays", layout="npy")
    plan = start(api, token, files).json()
    response = complete(api, token, plan["id"], {"files": send(plan, files)})
    assert response.status_code == 201, response.text
    assert response.json()["shards"] == {"layout": "npy", "files": 3}
    late = httpx.put(plan["files"][0]["parts"][0]["url"], content=b"overwritten after the checks")
    assert late.is_error  # the upload is complete: its part URLs write nothing any more (AWS: 404, moto: 500)
    key = api.session.get(Dataset, response.json()["id"]).key  # type: ignore[union-attr]
    assert store.get_bytes(key + plan["files"][0]["name"]) == files[plan["files"][0]["name"]]
    assert api.client.delete(f"/v1/datasets/{response.json()['id']}", headers=api.auth(token)).status_code == 204
    assert store.list_keys("") == []  # the folder went with the row


def test_a_folder_failing_its_checks_is_refused_and_deleted_whole(api: Api, store: S3Store, tmp_path: Path) -> None:
    token = api.new_key()
    files = folder_of_shards(tmp_path / "shards")
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "odd.npz", audio=rng.normal(size=(20, 7)), video=rng.normal(size=(20, 2, 5)), label=np.arange(20) % 3
    )
    files["part-00001.npz"] = (tmp_path / "odd.npz").read_bytes()  # the second shard's audio has 7 features
    plan = start(api, token, files).json()
    response = complete(api, token, plan["id"], {"files": send(plan, files)})
    assert response.status_code == 422
    error = response.json()["errors"][0]
    assert error["path"] == "files"
    assert error["message"].startswith("shards/part-00001.npz: modality 'audio' has per-sample shape (7,)")
    assert store.list_keys("") == []
    assert api.session.query(Dataset).count() == 0 and api.session.query(DatasetUpload).count() == 0


def test_wrong_parts_leave_the_upload_open_for_another_try(api: Api, store: S3Store, tmp_path: Path) -> None:
    token = api.new_key()
    files = folder_of_shards(tmp_path / "shards")
    plan = start(api, token, files).json()
    sent = send(plan, files)
    wrong = [sent[0], sent[1], {**sent[2], "parts": [{"part_number": 1, "etag": '"0000"'}]}]
    response = complete(api, token, plan["id"], {"files": wrong})
    assert response.status_code == 422 and response.json()["errors"][0]["path"] == "files.part-00002.npz"
    missing = complete(api, token, plan["id"], {"files": sent[:2]})
    assert missing.status_code == 422 and "missing ['part-00002.npz']" in missing.json()["detail"]
    assert complete(api, token, plan["id"], {"parts": sent[0]["parts"]}).status_code == 422  # the other kind
    twice = complete(api, token, plan["id"], {"files": [sent[0], sent[0]]})
    assert twice.status_code == 422 and [e["path"] for e in twice.json()["errors"]] == ["files"]
    response = complete(api, token, plan["id"], {"files": sent})  # the first two were completed already
    assert response.status_code == 201, response.text
    assert response.json()["n_samples"] == 60


def big_npy_folder(folder: Path) -> dict[str, bytes]:
    """One .npy per array, the modality of three 8 MiB parts."""
    rng = np.random.default_rng(5)
    arrays = {"audio": rng.normal(size=(2000, 1100)), "label": np.arange(2000) % 2}
    return {path.name: path.read_bytes() for path in write_shards(arrays, folder, layout="npy")}


def test_only_the_planned_parts_and_sizes_complete_a_file(api: Api, store: S3Store, tmp_path: Path) -> None:
    """S3 would assemble any subset of a file's parts: a completion must name exactly parts 1 to n,
    and a file whose size is not the planned one ends the upload (its folder goes with it)."""
    token = api.new_key()
    files = big_npy_folder(tmp_path / "arrays")
    plan = start(api, token, files).json()
    sent = {entry["name"]: entry for entry in send(plan, files)}
    assert len(sent["audio.npy"]["parts"]) == 3
    subset = [{"name": "audio.npy", "parts": sent["audio.npy"]["parts"][:2]}, sent["label.npy"]]
    refused = complete(api, token, plan["id"], {"files": subset})
    assert refused.status_code == 422 and refused.json()["errors"][0]["path"] == "files.audio.npy"
    assert store.list_keys("") == []  # refused before anything was assembled
    response = complete(api, token, plan["id"], {"files": list(sent.values())})
    assert response.status_code == 201, response.text
    assert response.json()["shards"] == {"layout": "npy", "files": 2}

    longer = {**files, "label.npy": files["label.npy"] + b"\0" * 100}  # more bytes than it said
    plan = start(api, token, files).json()
    sent_longer = send(plan, longer)
    response = complete(api, token, plan["id"], {"files": sent_longer})
    assert response.status_code == 422 and "the upload said" in response.json()["detail"]
    assert complete(api, token, plan["id"], {"files": sent_longer}).status_code == 404  # over, folder and all
    assert len(store.list_keys("datasets/")) == 2  # only the first dataset's files


def test_abort_drops_assembled_files_and_waits_for_a_completion(api: Api, store: S3Store, tmp_path: Path) -> None:
    token = api.new_key()
    files = folder_of_shards(tmp_path / "shards")
    plan = start(api, token, files).json()
    sent = send(plan, files)
    wrong = [sent[0], sent[1], {**sent[2], "parts": [{"part_number": 1, "etag": '"0000"'}]}]
    assert complete(api, token, plan["id"], {"files": wrong}).status_code == 422
    assert len(store.list_keys("")) == 2  # two files assembled, the upload still open
    upload = api.session.get(DatasetUpload, plan["id"])
    assert upload is not None
    url = f"/v1/datasets/uploads/{plan['id']}"
    upload.claimed_at = utcnow()  # a completion is under way
    api.session.commit()
    assert api.client.delete(url, headers=api.auth(token)).status_code == 409
    assert complete(api, token, plan["id"], {"files": sent}).status_code == 409
    upload.claimed_at = utcnow() - dt.timedelta(hours=2)  # one that died
    api.session.commit()
    assert api.client.delete(url, headers=api.auth(token)).status_code == 204
    assert store.list_keys("") == []
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


def test_an_outage_while_checking_leaves_the_upload_open(
    api: Api, store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = api.new_key()
    files = folder_of_shards(tmp_path / "shards")
    plan = start(api, token, files).json()
    sent = send(plan, files)

    def unreachable(folder: str) -> S3Store:
        raise StorageError("S3 list failed after retries")

    monkeypatch.setattr(store, "within", unreachable)
    response = complete(api, token, plan["id"], {"files": sent})
    assert response.status_code == 503
    assert len(store.list_keys("")) == 3  # kept for the next try
    monkeypatch.undo()
    response = complete(api, token, plan["id"], {"files": sent})
    assert response.status_code == 201, response.text


def test_limits_names_owners_and_abort(api: Api, store: S3Store, tmp_path: Path) -> None:
    api.app.state.settings = api.app.state.settings.model_copy(
        update={"max_dataset_bytes": 4096, "max_sharded_dataset_bytes": 10_000}
    )
    alice, bob = api.new_key(), api.new_key()
    assert start(api, alice, [{"name": "a.npz", "size_bytes": 4097}]).status_code == 413
    ranged = start(api, alice, [{"name": "audio.npy", "size_bytes": 8000}])
    assert ranged.status_code == 201  # a modality's .npy is read in ranges: only the total bounds it
    assert api.client.delete(f"/v1/datasets/uploads/{ranged.json()['id']}", headers=api.auth(alice)).status_code == 204
    annotations = [{"name": "audio.npy", "size_bytes": 10}, {"name": "label.npy", "size_bytes": 4097}]
    assert start(api, alice, annotations).status_code == 413  # an annotation is read whole
    too_many = [{"name": f"p{n}.npz", "size_bytes": 4000} for n in range(3)]
    assert "MMKD_MAX_SHARDED_DATASET_BYTES" in start(api, alice, too_many).json()["detail"]
    for bad, path in (
        ([{"name": "a.npz", "size_bytes": 10}, {"name": "b.npy", "size_bytes": 10}], "files"),
        ([{"name": "a.npz", "size_bytes": 10}, {"name": "a.npz", "size_bytes": 10}], "files"),
        ([{"name": "a-b.npy", "size_bytes": 10}], "files"),
        ([{"name": "label.npy", "size_bytes": 10}], "files"),
        ([{"name": "../a.npz", "size_bytes": 10}], "files.0.name"),
        ([{"name": "a.txt", "size_bytes": 10}], "files.0.name"),
    ):
        refused = start(api, alice, bad)
        assert refused.status_code == 422 and [e["path"] for e in refused.json()["errors"]] == [path], refused.text
    both = {"name": "x", "size_bytes": 10, "files": [{"name": "a.npz", "size_bytes": 10}]}
    assert api.client.post("/v1/datasets/uploads", json=both, headers=api.auth(alice)).status_code == 422
    api.app.state.settings = api.app.state.settings.model_copy(update={"max_dataset_bytes": 1 << 20})
    files = folder_of_shards(tmp_path / "shards")
    plan = start(api, alice, files).json()
    sent = send(plan, files)
    assert complete(api, bob, plan["id"], {"files": sent}).json()["detail"] == f"no upload {plan['id']}"
    url = f"/v1/datasets/uploads/{plan['id']}"
    assert api.client.delete(url, headers=api.auth(bob)).json()["detail"] == f"no upload {plan['id']}"
    api.app.state.settings = api.app.state.settings.model_copy(update={"max_sharded_dataset_bytes": 1024})
    over = complete(api, alice, plan["id"], {"files": sent})  # the limit fell since the upload began
    assert over.status_code == 413 and store.list_keys("") == []
    assert api.client.delete(url, headers=api.auth(alice)).status_code == 404  # over with the refusal
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


def test_the_largest_completion_fits_in_a_request_body() -> None:
    """MAX_UPLOAD_FILES files with the longest names, and their parts (at most MAX_PARTS + one a file),
    with S3's ETags: the completion's body stays under MMKD_MAX_BODY_BYTES' default."""
    from jobs.dataset_uploads import MAX_PARTS, MAX_UPLOAD_FILES
    from service.config import ApiSettings

    etag = '"' + "f" * 32 + '"'
    parts_each = (MAX_PARTS + MAX_UPLOAD_FILES) // MAX_UPLOAD_FILES
    files = [
        {
            "name": f"{n:03d}" + "x" * 93 + ".npz",
            "parts": [{"part_number": p, "etag": etag} for p in range(1, parts_each + 1)],
        }
        for n in range(MAX_UPLOAD_FILES)
    ]
    assert len(json.dumps({"files": files}).encode()) < ApiSettings().max_body_bytes


def test_sharded_uploads_need_an_s3_store(api: Api) -> None:
    response = start(api, api.new_key(), [{"name": "a.npz", "size_bytes": 10}])
    assert response.status_code == 409 and "S3" in response.json()["detail"]


def test_a_raw_folder_is_refused_at_submit_for_what_needs_one_file(api: Api, tmp_path: Path) -> None:
    api.app.state.settings = api.app.state.settings.model_copy(update={"data_allow": [str(tmp_path)]})
    token = api.new_key()
    job = {
        "name": "raw-shards",
        "task": "classification",
        "dataset": {"uri": f"{tmp_path}/shards/", "primary": ["audio"], "auxiliary": ["video"]},
        "method": {"name": "mfh_kd"},
    }
    refused = api.client.post("/v1/jobs", json=job, headers=api.auth(token))
    assert refused.status_code == 422 and refused.json()["errors"][0]["path"] == "method.name"
    job["dataset"]["uri"] = f"{tmp_path}/one.npz"  # type: ignore[index]
    assert api.client.post("/v1/jobs", json=job, headers=api.auth(token)).status_code == 201
