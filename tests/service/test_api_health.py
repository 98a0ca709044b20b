"""Probes, OpenAPI operation ids, and artifact links/downloads from the local store."""

from __future__ import annotations

from pathlib import Path

from api_helpers import Api, make_settings
from fastapi.testclient import TestClient

from jobs import lifecycle
from service.main import create_app


def test_healthz_and_readyz(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_readyz_names_the_broken_dependency(pg_database: str, tmp_path: Path) -> None:
    settings = make_settings(
        pg_database, "redis://127.0.0.1:1/0", tmp_path / "a", enqueue_timeout_seconds=0.5
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    checks = response.json()["checks"]
    assert checks["database"] == "ok" and checks["broker"].startswith("error")


def test_operation_ids_are_stable(api: Api) -> None:
    ops = {
        op["operationId"]
        for path in api.client.get("/openapi.json").json()["paths"].values()
        for op in path.values()
    }
    assert ops == {
        "submit_job",
        "list_jobs",
        "get_job",
        "cancel_job",
        "list_job_events",
        "get_job_metrics",
        "list_job_artifacts",
        "download_artifact",
        "list_job_logs",
        "stream_job",
        "healthz",
        "readyz",
        "whoami",
        "upload_dataset",
        "list_datasets",
        "get_dataset",
        "delete_dataset",
        "start_dataset_upload",
        "complete_dataset_upload",
        "abort_dataset_upload",
        "create_study",
        "list_studies",
        "get_study",
        "list_study_trials",
        "cancel_study",
    }


def test_openapi_documents_problem_json(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    submit = schema["paths"]["/v1/jobs"]["post"]["responses"]
    for status in ("401", "409", "413", "422"):
        assert submit[status]["content"]["application/problem+json"]["schema"] == problem_ref
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert set(schema["components"]["schemas"]["Problem"]["required"]) >= {
        "type",
        "title",
        "status",
        "detail",
    }


def test_artifact_link_and_download(api: Api) -> None:
    token = api.new_key()
    job_id = api.submit(token).json()["id"]
    key = f"jobs/{job_id}/report/metrics.csv"
    path = api.app.state.store.local_path(key)
    path.parent.mkdir(parents=True)
    path.write_text("epoch,acc\n1,0.5\n")
    lifecycle.record_artifact(
        api.session, job_id=job_id, key=key, kind="report", size_bytes=16, checksum="x"
    )
    api.session.commit()
    items = api.client.get(f"/v1/jobs/{job_id}/artifacts", headers=api.auth(token)).json()["items"]
    assert [(i["key"], i["kind"], i["size_bytes"]) for i in items] == [(key, "report", 16)]
    assert items[0]["url"].endswith(f"/v1/jobs/{job_id}/artifacts/{items[0]['id']}/download")
    download = api.client.get(items[0]["url"], headers=api.auth(token))
    assert download.status_code == 200 and download.text == "epoch,acc\n1,0.5\n"


def test_whoami(api: Api) -> None:
    assert api.client.get("/v1/whoami", headers=api.auth(api.new_key("carol"))).json() == {
        "owner": "carol",
        "auth": True,
    }
