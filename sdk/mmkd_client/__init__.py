"""Python client for the mmkd training service (httpx + pydantic; no torch)."""

from mmkd_client.client import Client
from mmkd_client.errors import (
    ApiError,
    AuthError,
    Conflict,
    ConnectionFailed,
    JobCancelled,
    JobFailed,
    MmkdError,
    NotFound,
    ServerError,
    ValidationFailed,
    WaitTimeout,
)
from mmkd_client.models import Artifact, Event, Job, JobSummary, MetricPoint, Progress

__all__ = [
    "ApiError",
    "Artifact",
    "AuthError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Event",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobSummary",
    "MetricPoint",
    "MmkdError",
    "NotFound",
    "Progress",
    "ServerError",
    "ValidationFailed",
    "WaitTimeout",
]
