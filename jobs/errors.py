"""Domain errors raised by the service layer; ``service.errors`` turns them into problem+json."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the errors a client can act on; carries the HTTP status it maps to."""

    status: int = 400
    title: str = "Bad request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(ServiceError):
    """The thing does not exist, or belongs to another owner."""

    status = 404
    title = "Not found"


class ConflictError(ServiceError):
    """The request contradicts the current state (reused idempotency key, finished job)."""

    status = 409
    title = "Conflict"


class InvalidTransitionError(ConflictError):
    """A job status change that the lifecycle does not allow."""

    title = "Invalid status transition"


class InvalidRequestError(ServiceError):
    """A request that passed schema validation but still cannot be stored; ``errors`` name the fields."""

    status = 422
    title = "Invalid request"

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{item['path']}: {item['message']}" for item in errors))
        self.errors = errors


class UnauthorizedError(ServiceError):
    """Missing, unknown or revoked API key."""

    status = 401
    title = "Unauthorized"


class LimitExceededError(ServiceError):
    """A per-owner limit is reached; the request may succeed later (429 with ``Retry-After``)."""

    status = 429
    title = "Too many jobs"

    def __init__(self, detail: str, *, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds
