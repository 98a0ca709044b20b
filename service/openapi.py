"""The OpenAPI document: every error response is a :class:`Problem` as ``application/problem+json``.

Each operation lists the error statuses it can really return, no more: the routers name them with
:func:`error_responses`, FastAPI adds 422 to operations that take parameters or a body, and
:func:`problem_openapi` swaps FastAPI's own 422 body for the problem schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"


class FieldProblem(BaseModel):
    """One invalid field or parameter."""

    path: str = Field(description="Dotted path inside the body, `query.NAME`, `path.NAME`, or `(body)`.")
    message: str


class Problem(BaseModel):
    """The body of every error response (RFC 9457 problem details)."""

    type: str = Field(description="`urn:mmkd:problem:` and the status's phrase, e.g. `urn:mmkd:problem:not-found`.")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="One line saying what is wrong, naming the field or the thing.")
    instance: str = Field(description="The request's path.")
    errors: list[FieldProblem] | None = Field(default=None, description="Validation problems (422) only.")


class ReadinessChecks(BaseModel):
    """Each dependency's state: `ok`, or `error: ...` saying what failed."""

    database: str
    broker: str
    storage: str


class NotReady(Problem):
    """A 503 from `/readyz`: which dependency failed."""

    checks: ReadinessChecks


RETRY_AFTER = {"description": "Seconds to wait before trying again.", "schema": {"type": "integer", "minimum": 0}}
WWW_AUTHENTICATE = {"description": "`Bearer`.", "schema": {"type": "string"}, "required": True}

#: What each error status means on this API, and the headers that come with it.
ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    401: ("Missing, unknown or revoked API key.", {"WWW-Authenticate": WWW_AUTHENTICATE}),
    404: ("No such resource, or another owner's (the same answer).", {}),
    409: ("Conflicts with the current state.", {}),
    413: ("Request body too large (`MMKD_MAX_BODY_BYTES`, or `MMKD_MAX_DATASET_BYTES` for datasets).", {}),
    422: (
        "Invalid request: a parameter or the body (malformed JSON included) breaks the schema or a rule of "
        "its own; `errors` lists the paths.",
        {},
    ),
    429: ("A per-owner limit is reached.", {"Retry-After": {**RETRY_AFTER, "required": True}}),
    503: (
        "Busy (no room or no database connection came free in time; `Retry-After` says when to retry).",
        {"Retry-After": RETRY_AFTER},
    ),
}


def error_responses(*statuses: int, said: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries documenting ``statuses`` as problem+json; ``said`` replaces the
    generic text of a status where the operation can say more."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        text, headers = ERRORS[status]
        out[status] = {
            "description": (said or {}).get(status, text),
            "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}},
            **({"headers": headers} if headers else {}),
        }
    return out


def _models_schemas(*models: type[BaseModel]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def problem_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """An ``app.openapi`` that documents every error as a :class:`Problem` instead of FastAPI's default."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            schemas.update(_models_schemas(Problem, NotReady))
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                if "422" in operation.get("responses", {}):
                    operation["responses"]["422"] = error_responses(422)[422]
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
