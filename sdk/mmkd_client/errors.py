"""One exception per case a caller handles differently."""

from __future__ import annotations

from typing import Any


class MmkdError(Exception):
    """Base of every error the client raises."""


class ApiError(MmkdError):
    """The server answered with an error (a problem+json body when it is an mmkd server)."""

    def __init__(self, status: int, detail: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.problem = problem or {}


class AuthError(ApiError):
    """Missing, unknown or revoked API key (401/403)."""


class NotFound(ApiError):
    """No such job, artifact, dataset or study, or it belongs to another owner (404)."""


class Conflict(ApiError):
    """The request contradicts the current state: a reused idempotency key, a finished job or study (409)."""


class ValidationFailed(ApiError):
    """The server rejected the request (422) or its size (413); ``errors`` lists the field paths."""

    @property
    def errors(self) -> list[dict[str, str]]:
        """``[{"path": "dataset.primary", "message": "..."}]``."""
        items: list[dict[str, str]] = self.problem.get("errors", [])
        return items

    @property
    def paths(self) -> list[str]:
        """Just the dotted field paths."""
        return [item["path"] for item in self.errors]


class RateLimited(ApiError):
    """429: this owner is at a limit (queued jobs); ``retry_after`` is the server's advice in seconds."""

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asks to wait, when it said."""
        value = self.problem.get("retry_after")
        return float(value) if isinstance(value, int | float) else None


class ServerError(ApiError):
    """The server failed (5xx), after retries for 502/503/504."""


class ConnectionFailed(MmkdError):
    """The server could not be reached, after retries."""


class JobFailed(MmkdError):
    """``wait`` saw the job fail; ``job.error`` says why."""

    def __init__(self, job: Any) -> None:
        super().__init__(f"job {job.id} failed: {job.error or job.status_reason or 'no reason given'}")
        self.job = job


class JobCancelled(MmkdError):
    """``wait`` saw the job cancelled."""

    def __init__(self, job: Any) -> None:
        super().__init__(f"job {job.id} was cancelled: {job.status_reason or 'no reason given'}")
        self.job = job


class StudyFailed(MmkdError):
    """``wait_study`` saw the study fail; ``study.status_reason`` says why."""

    def __init__(self, study: Any) -> None:
        super().__init__(f"study {study.id} failed: {study.status_reason or 'no reason given'}")
        self.study = study


class StudyCancelled(MmkdError):
    """``wait_study`` saw the study cancelled."""

    def __init__(self, study: Any) -> None:
        super().__init__(f"study {study.id} was cancelled: {study.status_reason or 'no reason given'}")
        self.study = study


class WaitTimeout(MmkdError, TimeoutError):
    """``wait`` or ``wait_study`` gave up before the job or study finished."""


def error_for(status: int, body: Any) -> ApiError:
    """The exception for an error response."""
    problem = body if isinstance(body, dict) else {}
    detail = str(problem.get("detail") or problem.get("title") or body or "no detail")
    kind: type[ApiError] = ApiError
    if status in (401, 403):
        kind = AuthError
    elif status == 404:
        kind = NotFound
    elif status == 409:
        kind = Conflict
    elif status in (413, 422):
        kind = ValidationFailed
    elif status == 429:
        kind = RateLimited
    elif status >= 500:
        kind = ServerError
    return kind(status, detail, problem)
