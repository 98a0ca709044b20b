"""With an S3 store (moto's server), artifact URLs are presigned and the download route redirects."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import httpx
from api_helpers import Api

from jobs import lifecycle
from service.config import ApiSettings
from storage.s3 import S3Store
from storage.store import store_from_settings


def test_presigned_urls_and_redirect(api: Api, moto_server: Any) -> None:
    bucket = f"mmkd-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint_url)
    s3.create_bucket(Bucket=bucket)
    settings = ApiSettings(storage_url=f"s3://{bucket}/runs", s3_endpoint_url=moto_server.endpoint_url)
    store = store_from_settings(settings)
    assert isinstance(store, S3Store)
    api.app.state.store = store
    assert api.client.get("/readyz").json()["checks"]["storage"] == "ok"

    token = api.new_key()
    job_id = api.submit(token).json()["id"]
    key = f"jobs/{job_id}/student/model.bin"
    s3.put_object(Bucket=bucket, Key=f"runs/{key}", Body=b"weights")
    lifecycle.record_artifact(
        api.session, job_id=job_id, key=key, kind="student", size_bytes=7, checksum=None
    )
    api.session.commit()

    item = api.client.get(f"/v1/jobs/{job_id}/artifacts", headers=api.auth(token)).json()["items"][0]
    assert item["url"].startswith(f"{moto_server.endpoint_url}/{bucket}/runs/{key}?")
    assert httpx.get(item["url"]).content == b"weights"  # no API key needed: the URL is signed
    redirect = api.client.get(
        f"/v1/jobs/{job_id}/artifacts/{item['id']}/download", headers=api.auth(token), follow_redirects=False
    )
    assert redirect.status_code == 307
    assert httpx.get(redirect.headers["location"]).content == b"weights"


def test_readyz_reports_a_missing_bucket(api: Api, moto_server: Any) -> None:
    api.app.state.store = S3Store("no-such-bucket", "", endpoint_url=moto_server.endpoint_url, max_attempts=1)
    response = api.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["storage"].startswith("error")
