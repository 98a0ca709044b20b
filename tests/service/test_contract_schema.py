"""The API contract as ``/openapi.json`` states it (issue 12, item 3), and docs/api.md against it.

The generic error statuses are derived from the handlers themselves (what their dependencies and
parameters can raise); the domain ones (409, 429, the redirect) come from a table. The schema
must document exactly their union, each error as problem+json, nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import SPEC, Api, make_settings
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import RouteContext, iter_route_contexts

from jobs.status import JobStatus
from service.admission import PROBES
from service.deps import MAX_ID, get_current_owner
from service.errors import METHODS_WITH_BODY
from service.main import create_app
from service.openapi import PROBLEM_JSON

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
#: What only the domain knows an operation can answer, beyond what its handler's shape implies.
DOMAIN_STATUSES: dict[str, set[int]] = {
    "healthz": {200},
    "readyz": {200, 503},
    "whoami": {200},
    "submit_job": {200, 201, 409, 429},
    "list_jobs": {200},
    "get_job": {200},
    "cancel_job": {200, 409},
    "list_job_events": {200},
    "get_job_metrics": {200},
    "list_job_artifacts": {200},
    "download_artifact": {200, 307},
    "list_job_logs": {200, 429},
    "stream_job": {200, 429},
    "upload_dataset": {201},
    "list_datasets": {200},
    "get_dataset": {200},
    "delete_dataset": {204, 409},
    "start_dataset_upload": {201, 409},
    "complete_dataset_upload": {201, 409},
    "abort_dataset_upload": {204, 409},
    "create_study": {200, 201, 409, 429},
    "list_studies": {200},
    "get_study": {200},
    "list_study_trials": {200},
    "cancel_study": {200, 409},
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """An app for its schema and routes (nothing connects until a request comes)."""
    folder = tmp_path_factory.mktemp("contract")
    return create_app(make_settings(f"sqlite:///{folder}/mmkd.db", "redis://127.0.0.1:1/0", folder / "artifacts"))


@pytest.fixture(scope="module")
def schema(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document."""
    return app.openapi()


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def _uses(dependant: Dependant, function: Any) -> bool:
    return dependant.call is function or any(_uses(sub, function) for sub in dependant.dependencies)


def _all_params(dependant: Dependant) -> list[Any]:
    own = [*dependant.path_params, *dependant.query_params, *dependant.header_params, *dependant.body_params]
    return own + [param for sub in dependant.dependencies for param in _all_params(sub)]


def derived_statuses(route: RouteContext) -> set[int]:
    """The error statuses a handler's shape implies: a key check (401, and 503 when no database
    connection comes free), admission (503 on everything but the probes), a resource named in
    the path (404), a readable body (413), any parameter or body (422)."""
    codes: set[int] = set()
    if _uses(route.dependant, get_current_owner):
        codes |= {401, 503}
    if route.path not in PROBES:
        codes.add(503)
    if "{" in (route.path or ""):
        codes.add(404)
    if (route.methods or set()) & METHODS_WITH_BODY:
        codes.add(413)
    if _all_params(route.dependant):
        codes.add(422)
    return codes


def test_every_operation_documents_exactly_what_it_can_return(app: FastAPI, schema: dict[str, Any]) -> None:
    routes = {
        route.name: route
        for route in iter_route_contexts(app.routes)
        if hasattr(route, "dependant") and getattr(route, "include_in_schema", True)  # pages and /metrics: not API
    }
    documented = {
        operation["operationId"]: {int(code) for code in operation["responses"]}
        for *_, operation in _operations(schema)
    }
    assert set(documented) == set(DOMAIN_STATUSES) == set(routes)
    for name, codes in documented.items():
        assert codes == derived_statuses(routes[name]) | DOMAIN_STATUSES[name], name


def test_whoami_documents_401_and_lists_no_404(schema: dict[str, Any]) -> None:
    assert set(schema["paths"]["/v1/whoami"]["get"]["responses"]) == {"200", "401", "503"}
    for listing in ("/v1/jobs", "/v1/datasets", "/v1/studies"):
        assert "404" not in schema["paths"][listing]["get"]["responses"]


def test_every_error_is_problem_json(schema: dict[str, Any]) -> None:
    for method, path, operation in _operations(schema):
        for code, response in operation["responses"].items():
            if int(code) < 400:
                continue
            where = f"{method} {path} {code}"
            assert set(response["content"]) == {PROBLEM_JSON}, where
            ref = response["content"][PROBLEM_JSON]["schema"]["$ref"]
            expected = "NotReady" if path == "/readyz" else "Problem"
            assert ref == f"#/components/schemas/{expected}", where
    problem = schema["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "instance"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_error_headers_are_documented(schema: dict[str, Any]) -> None:
    for method, path, operation in _operations(schema):
        responses = operation["responses"]
        if "401" in responses:
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"], f"{method} {path}"
        if "429" in responses:
            assert responses["429"]["headers"]["Retry-After"]["required"], f"{method} {path}"


def test_success_content_types(schema: dict[str, Any]) -> None:
    for method, path, operation in _operations(schema):
        for code, response in operation["responses"].items():
            if code in {"204", "307"}:
                assert "content" not in response, f"{method} {path} {code}"
            elif int(code) >= 300:
                continue
            elif path.endswith("/stream"):
                assert set(response["content"]) == {"text/event-stream"}, f"{method} {path} {code}"
            elif path.endswith("/logs"):  # a page, or with follow=true the live lines
                assert set(response["content"]) == {"application/json", "text/event-stream"}, f"{method} {path}"
            elif "download" not in path:
                assert set(response["content"]) == {"application/json"}, f"{method} {path} {code}"
    download = schema["paths"]["/v1/jobs/{job_id}/artifacts/{artifact_id}/download"]["get"]["responses"]
    assert download["200"]["content"] == {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
    }
    assert download["307"]["headers"]["Location"]["required"]
    ready = schema["paths"]["/readyz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ready == {"$ref": "#/components/schemas/Ready"}


def test_job_is_typed(schema: dict[str, Any]) -> None:
    schemas = schema["components"]["schemas"]
    job = schemas["JobOut"]["properties"]
    assert job["spec"]["$ref"] == "#/components/schemas/JobSpec"
    assert job["status"] == {"$ref": "#/components/schemas/JobStatus"}
    assert schemas["JobStatus"]["enum"] == [status.value for status in JobStatus]
    union, probe, null = job["result"]["anyOf"]  # a legacy row's stored JSON is not part of the contract (docs/api.md)
    assert null == {"type": "null"}
    assert probe == {"$ref": "#/components/schemas/ProbeResult"}
    assert schemas["ProbeResult"]["properties"]["kind"]["const"] == "probe"
    tasks = {"classification", "multilabel", "regression", "retrieval"}
    assert union["discriminator"]["propertyName"] == "task"
    assert set(union["discriminator"]["mapping"]) == tasks
    for task in tasks:
        result = schemas[f"{task.capitalize()}Result"]
        assert {"student", "teacher", "auxiliary", "validation", "task"} <= set(result["required"])
    assert set(schemas["RetrievalMetrics"]["properties"]) == {"r@1", "r@5", "r@10", "median_rank"}
    listing = schema["paths"]["/v1/jobs"]["get"]["parameters"]
    status_filter = next(p for p in listing if p["name"] == "status")["schema"]["anyOf"][0]
    assert status_filter["items"] == {"$ref": "#/components/schemas/JobStatus"}


def test_path_ids_are_bounded_integers(schema: dict[str, Any]) -> None:
    for method, path, operation in _operations(schema):
        for param in operation.get("parameters", []):
            if param["in"] == "path":
                assert param["schema"]["type"] == "integer", f"{method} {path}"
                assert (param["schema"]["minimum"], param["schema"]["maximum"]) == (1, MAX_ID), f"{method} {path}"


def test_limits_are_in_the_schema(schema: dict[str, Any]) -> None:
    def param(path: str, name: str) -> dict[str, Any]:
        parameters = schema["paths"][path]["get"]["parameters"]
        found: dict[str, Any] = next(p for p in parameters if p["name"] == name)["schema"]
        return found.get("anyOf", [found])[0]

    assert (param("/v1/jobs", "limit")["minimum"], param("/v1/jobs", "limit")["maximum"]) == (1, 200)
    assert param("/v1/datasets", "cursor")["maxLength"] == 100
    names = param("/v1/jobs/{job_id}/metrics", "names")["items"]["pattern"]
    assert re.fullmatch(names, "a" * 128 + ",b") and not re.fullmatch(names, "a" * 129)
    assert not re.fullmatch(names, "a\x00b")
    schemas = schema["components"]["schemas"]
    assert schemas["MetricPointOut"]["properties"]["name"]["maxLength"] == 128
    upload = schemas["UploadRequest"]
    assert upload["properties"]["size_bytes"]["anyOf"][0]["maximum"] == 2**53 - 1
    assert "pattern" in upload["properties"]["name"]
    assert upload["oneOf"] == [{"required": ["size_bytes"]}, {"required": ["files"]}]  # one kind or the other
    shard_name = schemas["FileRequest"]["properties"]["name"]["pattern"]
    assert re.fullmatch(shard_name, "part-00000.npz") and not re.fullmatch(shard_name, "../a.npz")
    assert upload["properties"]["files"]["anyOf"][0]["maxItems"] == 500
    submit = schema["paths"]["/v1/jobs"]["post"]
    assert "dataset.id" in submit["description"] and "422" in submit["description"]


# --- the same rules, live --------------------------------------------------------------------


@pytest.mark.parametrize("segment", ["%0C{}", "+{}", "{}.0", "{}%20", "%20{}", "{}e0"])
def test_ids_that_are_not_digits_match_no_route(api: Api, segment: str) -> None:
    token = api.new_key()
    job_id = api.submit(token).json()["id"]
    assert api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(token)).status_code == 200
    for url in (f"/v1/jobs/{segment}", f"/v1/jobs/{segment}/events", "/v1/datasets/{}"):
        response = api.client.get(url.format(job_id), headers=api.auth(token))
        assert response.status_code == 404, url
        assert response.headers["content-type"] == PROBLEM_JSON


def test_ids_in_other_scripts_match_no_route(api: Api) -> None:
    token = api.new_key()
    job_id = api.submit(token).json()["id"]
    arabic = str(job_id).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    assert api.client.get(f"/v1/jobs/{arabic}", headers=api.auth(token)).status_code == 404


def _id_urls(app: FastAPI, other_id: int) -> Iterator[tuple[str, str, str]]:
    """Every route with an id in its path, once per id: (method, URL with that id 5,000 digits long and any
    other id ``other_id``, the long id's name)."""
    for route in iter_route_contexts(app.routes):
        if not getattr(route, "include_in_schema", True):
            continue  # the dashboard's pages: tests/service/test_ui_pages.py
        path, methods = route.path or "", route.methods or set()
        names = re.findall(r"{(\w+)(?::\w+)?}", path)
        for huge in names:
            url = path
            for name in names:
                url = re.sub(rf"{{{name}(:\w+)?}}", "9" * 5000 if name == huge else str(other_id), url)
            yield from ((method, url, huge) for method in sorted(methods - {"HEAD"}))


def test_an_id_of_5000_digits_is_a_422_at_its_path(api: Api) -> None:
    """Python's int() refuses more than 4,300 digits; such an id is out of range like any other (not a 500)."""
    token = api.new_key()
    headers = {**api.auth(token), "Content-Type": "application/json"}
    urls = list(_id_urls(api.app, other_id=api.submit(token).json()["id"]))  # a job of the caller's
    assert {name for _, _, name in urls} == {"job_id", "artifact_id", "dataset_id", "upload_id", "study_id"}
    for method, url, name in urls:
        response = api.client.request(method, url, headers=headers, content=b"{}")
        assert response.status_code == 422, f"{method} {url[:40]}: {response.status_code}"
        problem = response.json()
        assert f"path.{name}" in [error["path"] for error in problem["errors"]], f"{method} {url[:40]}"
        assert "9" * 50 not in problem["detail"] + str(problem["errors"])  # only `instance` holds the URL


@pytest.mark.parametrize("epochs", [True, "3", 3.0])
def test_a_bool_string_or_float_for_an_int_in_a_spec_is_a_422_naming_it(api: Api, epochs: object) -> None:
    spec = {**SPEC, "train": {**SPEC["train"], "epochs": epochs}}
    response = api.submit(api.new_key(), spec)
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM_JSON
    assert [error["path"] for error in response.json()["errors"]] == ["train.epochs"]
    assert response.json()["detail"].startswith("train.epochs: ")


@pytest.mark.parametrize("limit", ["+5", " 5", "5.0", "%D9%A5", "0x5"])
def test_integer_query_parameters_are_digits_only(api: Api, limit: str) -> None:
    response = api.client.get(f"/v1/jobs?limit={limit}", headers=api.auth(api.new_key()))
    assert response.status_code == 422
    assert [error["path"] for error in response.json()["errors"]] == ["query.limit"]


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v1/jobs", b"{not json"),
        ("/v1/jobs", b"\xff\xfe{}"),
        ("/v1/datasets/uploads", b"\xff"),
        ("/v1/datasets/uploads/1/complete", b"[1,"),
    ],
)
def test_malformed_bodies_are_one_422_at_body(api: Api, url: str, body: bytes) -> None:
    headers = {**api.auth(api.new_key()), "Content-Type": "application/json"}
    response = api.client.post(url, content=body, headers=headers)
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM_JSON
    errors = response.json()["errors"]
    assert [error["path"] for error in errors] == ["(body)"] and errors[0]["message"].startswith("malformed JSON")


def test_a_json_body_with_a_duplicate_key_is_a_422_at_body(api: Api) -> None:
    """json.loads keeps the last of two equal keys; a spec file with one is an error, so is the body."""
    body = (
        b'{"name": "dup", "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["kar"]},'
        b' "method": {"name": "student_only"}, "train": {"epochs": 1, "epochs": 2}}'
    )
    headers = {**api.auth(api.new_key()), "Content-Type": "application/json"}
    response = api.client.post("/v1/jobs", content=body, headers=headers)
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM_JSON
    errors = response.json()["errors"]
    assert errors == [{"path": "(body)", "message": 'malformed JSON: duplicate key "epochs"'}]


def test_a_made_up_cursor_is_a_documented_422(api: Api) -> None:
    response = api.client.get("/v1/jobs?cursor=bm9wZQ", headers=api.auth(api.new_key()))
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM_JSON
    assert [error["path"] for error in response.json()["errors"]] == ["query.cursor"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [("/v1/datasets", "GET, POST"), ("/v1/datasets/uploads", "POST"), ("/v1/datasets/1", "DELETE, GET")],
)
def test_405_lists_every_method_of_the_path(api: Api, url: str, allowed: str) -> None:
    response = api.client.request("PATCH", url, headers=api.auth(api.new_key()))
    assert response.status_code == 405 and response.headers["allow"] == allowed


def test_a_job_reads_back_typed(api: Api) -> None:
    token = api.new_key()
    job = api.submit(token).json()
    assert job["status"] == "queued" and job["result"] is None
    assert job["spec"]["dataset"] == {**job["spec"]["dataset"], **SPEC["dataset"]}
    assert job["spec"]["method"]["name"] == "paper"


def test_download_is_octet_stream(api: Api) -> None:
    from jobs import lifecycle

    token = api.new_key()
    job_id = api.submit(token).json()["id"]
    key = f"jobs/{job_id}/summary.json"
    root = Path(api.app.state.settings.storage_url.removeprefix("file://"))
    (root / key).parent.mkdir(parents=True, exist_ok=True)
    (root / key).write_text("{}")
    artifact = lifecycle.record_artifact(
        api.session, job_id=job_id, key=key, kind="summary", size_bytes=2, checksum=None
    )
    api.session.commit()
    response = api.client.get(f"/v1/jobs/{job_id}/artifacts/{artifact.id}/download", headers=api.auth(token))
    assert response.status_code == 200 and response.content == b"{}"
    assert response.headers["content-type"] == "application/octet-stream"


# --- docs/api.md -------------------------------------------------------------------------------


def _docs_table() -> dict[str, tuple[str, set[int]]]:
    rows = re.findall(r"^\| `(\w+)` \| `([A-Z]+ [^`]+)` \| ([0-9, ]+) \|$", DOCS.read_text(), flags=re.MULTILINE)
    return {name: (route, {int(code) for code in codes.split(",")}) for name, route, codes in rows}


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path).rstrip("/")


def test_docs_list_every_operation_with_its_statuses(schema: dict[str, Any]) -> None:
    table = _docs_table()
    in_schema = {
        operation["operationId"]: (f"{method} {path}", {int(code) for code in operation["responses"]})
        for method, path, operation in _operations(schema)
    }
    assert table == in_schema


def test_docs_name_no_operation_the_schema_lacks(schema: dict[str, Any]) -> None:
    known = {(method, _shape(path)) for method, path, _ in _operations(schema)}
    mentioned = re.findall(r"\b(GET|POST|PUT|PATCH|DELETE) (/[\w{}/.-]*)", DOCS.read_text())
    assert mentioned
    unknown = sorted({(method, path) for method, path in mentioned if (method, _shape(path)) not in known})
    assert unknown == []
