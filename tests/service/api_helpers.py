"""Helpers shared by the API tests (a plain module: test files cannot import conftest)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from jobs import keys as keys_service
from service.config import ApiSettings

SPEC: dict[str, Any] = {
    "name": "mfeat-paper",
    "dataset": {"name": "mfeat", "primary": ["fou", "zer", "mor"], "auxiliary": ["fac", "pix", "kar"]},
    "method": {"name": "paper"},
    "train": {"epochs": 2, "seed": 7},
}


@dataclass
class Api:
    """A test client plus a way to arrange rows in the same database."""

    client: TestClient
    app: FastAPI
    session: Session

    def new_key(self, owner: str | None = None) -> str:
        """Issue a key for ``owner`` (a fresh unique owner by default); returns the token."""
        _, token = keys_service.create_key(self.session, owner_name=owner or f"owner-{uuid.uuid4().hex[:8]}")
        return token

    def auth(self, token: str) -> dict[str, str]:
        """Headers carrying ``token``."""
        return {"Authorization": f"Bearer {token}"}

    def submit(
        self, token: str, spec: dict[str, Any] | None = None, idempotency_key: str | None = None
    ) -> Any:
        """POST a spec (with an Idempotency-Key when given); returns the response."""
        headers = self.auth(token) | ({"Idempotency-Key": idempotency_key} if idempotency_key else {})
        return self.client.post("/v1/jobs", json=spec or SPEC, headers=headers)


def make_settings(database_url: str, broker_url: str, storage_root: Path, **overrides: Any) -> ApiSettings:
    """ApiSettings for a test app (nothing read from the environment that matters)."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "broker_url": broker_url,
        "storage_url": storage_root.as_uri(),
        "home": storage_root.parent,
        "auth_cache_seconds": 0.0,  # every request checks its key (tests revoke keys)
        **overrides,
    }
    return ApiSettings(**values)
