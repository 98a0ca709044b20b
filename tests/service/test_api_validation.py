"""Every error path answers problem+json; validation problems name the field path."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from api_helpers import SPEC, Api

from jobs import keys as keys_service


def _spec(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = spec
        for part in parents:
            target = target[part]
        target[leaf] = value
    return spec


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["instance"]
    return body


@pytest.mark.parametrize(
    ("spec", "path", "needle"),
    [
        (_spec(colour="blue"), "colour", "Extra inputs are not permitted"),
        (_spec(train__colour="blue"), "train.colour", "Extra inputs are not permitted"),
        (_spec(method={"name": "magic"}), "method", "does not match any of the expected tags"),
        (_spec(dataset__primary=[]), "dataset.primary", "at least 1 item"),
        (
            _spec(dataset__auxiliary=["fou", "pix"]),
            "dataset",
            "in both dataset.primary and dataset.auxiliary",
        ),
        (_spec(method={"name": "paper", "alpha": -1}), "method.paper.alpha", "greater than or equal to 0"),
        (_spec(train__epochs="many"), "train.epochs", "valid integer"),
    ],
    ids=[
        "unknown-field",
        "unknown-nested-field",
        "bad-method",
        "empty-primary",
        "modality-in-both",
        "range",
        "type",
    ],
)
def test_invalid_spec_is_422_with_field_path(api: Api, spec: dict[str, Any], path: str, needle: str) -> None:
    body = _problem(api.submit(api.new_key(), spec), 422)
    matching = [e for e in body["errors"] if e["path"] == path]
    assert matching, body["errors"]
    assert needle in matching[0]["message"]


def test_malformed_json_is_422(api: Api) -> None:
    headers = {**api.auth(api.new_key()), "Content-Type": "application/json"}
    body = _problem(api.client.post("/v1/jobs", content=b"{not json", headers=headers), 422)
    assert [error["path"] for error in body["errors"]] == ["(body)"]
    assert body["errors"][0]["message"].startswith("malformed JSON: Expecting property name")


def test_declared_body_too_large_is_413(api: Api) -> None:
    padding = "x" * (api.app.state.settings.max_body_bytes + 1)
    body = _problem(api.submit(api.new_key(), _spec(name=padding)), 413)
    assert "larger than" in body["detail"]


def test_streamed_body_too_large_is_413(api: Api) -> None:
    limit = api.app.state.settings.max_body_bytes

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count
        for _ in range(limit // 1024 + 2):
            yield b" " * 1024

    headers = {**api.auth(api.new_key()), "Content-Type": "application/json"}
    _problem(api.client.post("/v1/jobs", content=chunks(), headers=headers), 413)


@pytest.mark.parametrize(
    "header", [None, "Bearer nope", "Basic abc"], ids=["missing", "unknown", "wrong-scheme"]
)
def test_bad_key_is_401(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = api.client.get("/v1/jobs", headers=headers)
    _problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


def test_revoked_key_is_401(api: Api) -> None:
    token = api.new_key()
    assert api.client.get("/v1/jobs", headers=api.auth(token)).status_code == 200
    prefix = "_".join(token.split("_")[:2])
    keys_service.revoke_key(api.session, key_ref=prefix)
    _problem(api.client.get("/v1/jobs", headers=api.auth(token)), 401)


def test_auth_cache_keeps_a_key_for_its_ttl_only(api: Api) -> None:
    from jobs.keys import AuthCache, Principal

    now = [100.0]
    cache = AuthCache(ttl_seconds=0.2, clock=lambda: now[0])
    cache.put("h", Principal(id=1, name="a"))
    now[0] += 0.2
    assert cache.get("h") == Principal(id=1, name="a")
    now[0] += 0.01
    assert cache.get("h") is None
    token = api.new_key()
    api.app.state.auth_cache = AuthCache(ttl_seconds=60)
    assert api.client.get("/v1/jobs", headers=api.auth(token)).status_code == 200
    keys_service.revoke_key(api.session, key_ref="_".join(token.split("_")[:2]))
    # within the TTL this process still trusts the key it checked: the documented trade-off
    assert api.client.get("/v1/jobs", headers=api.auth(token)).status_code == 200
    api.app.state.auth_cache = AuthCache(ttl_seconds=0)
    assert api.client.get("/v1/jobs", headers=api.auth(token)).status_code == 401


def test_bad_query_parameters_are_422(api: Api) -> None:
    headers = api.auth(api.new_key())
    body = _problem(api.client.get("/v1/jobs", params={"limit": 0}, headers=headers), 422)
    assert body["errors"][0]["path"] == "query.limit"
    body = _problem(api.client.get("/v1/jobs", params={"status": "sleeping"}, headers=headers), 422)
    assert body["errors"][0]["path"].startswith("query.status")
    body = _problem(api.client.get("/v1/jobs", params={"cursor": "garbage!"}, headers=headers), 422)
    assert "cursor" in body["detail"]


def test_unknown_route_and_method_are_problems(api: Api) -> None:
    _problem(api.client.get("/v1/nothing"), 404)
    _problem(api.client.delete("/v1/jobs"), 405)


def test_auth_off_refused_off_loopback(tmp_path: Any) -> None:
    from service.config import ApiSettings as Settings
    from service.main import create_app

    with pytest.raises(RuntimeError, match="loopback"):
        create_app(Settings(auth=False, host="0.0.0.0", home=tmp_path))


def test_auth_off_on_loopback_serves_the_local_owner(pg_database: str, redis_url: str, tmp_path: Any) -> None:
    from api_helpers import make_settings
    from fastapi.testclient import TestClient

    from service.main import create_app

    settings = make_settings(pg_database, redis_url, tmp_path / "artifacts", auth=False)
    with TestClient(create_app(settings), client=("127.0.0.1", 5000)) as client:
        assert client.get("/v1/whoami").json() == {"owner": "local", "auth": False}
        assert client.post("/v1/jobs", json=SPEC).json()["owner"] == "local"
    with TestClient(create_app(settings), client=("10.1.2.3", 5000)) as remote:
        assert remote.get("/v1/whoami").status_code == 401


@pytest.mark.parametrize(
    "url",
    [
        "/v1/jobs/99999999999",
        "/v1/jobs/0",
        "/v1/jobs/{job_id}/artifacts/99999999999/download",
        "/v1/jobs/{job_id}/metrics?since_step=99999999999",
        "/v1/jobs/{job_id}/metrics?names=a%00b",
        "/v1/jobs?cursor=ajo5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ",
    ],
)
def test_out_of_range_ids_are_422_not_500(api: Api, url: str) -> None:
    token = api.new_key()
    job_id = api.submit(token).json()["id"]
    response = api.client.get(url.format(job_id=job_id), headers=api.auth(token))
    _problem(response, 422)


def test_non_finite_numbers_are_422_with_their_path(api: Api) -> None:
    body = json.dumps({**SPEC, "train": {"weight_decay": float("inf")}}).encode()  # Python writes Infinity
    headers = {**api.auth(api.new_key()), "Content-Type": "application/json"}
    problem = _problem(api.client.post("/v1/jobs", content=body, headers=headers), 422)
    assert problem["errors"] == [{"path": "train.weight_decay", "message": "must be a finite number"}]


def test_nul_characters_are_422_with_their_path(api: Api) -> None:
    api.app.state.settings = api.app.state.settings.model_copy(update={"data_allow": ["s3://bucket"]})
    spec = {**SPEC, "dataset": {"uri": "s3://bucket/a\x00b.npz", "primary": ["a"], "auxiliary": ["b"]}}
    problem = _problem(api.submit(api.new_key(), spec), 422)
    assert problem["errors"] == [{"path": "dataset.uri", "message": "must not contain the NUL character"}]


def test_resources_the_workers_do_not_offer_are_422_naming_the_field(api: Api) -> None:
    key = api.new_key()
    body = _problem(api.submit(key, _spec(resources={"procs_per_node": 9})), 422)
    assert body["errors"] == [
        {"path": "resources.procs_per_node", "message": "this service runs at most 8 processes of a job on one host"}
    ]
    body = _problem(api.submit(key, _spec(resources={"nodes": 2})), 422)
    assert [e["path"] for e in body["errors"]] == ["resources.nodes"]  # no Ray cluster configured
    accepted = api.submit(key, _spec(resources={"procs_per_node": 2}))
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["spec"]["resources"] == {"nodes": 1, "procs_per_node": 2, "device": "cpu", "gpus": None}
