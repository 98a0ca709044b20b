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
    RateLimited,
    ServerError,
    ValidationFailed,
    WaitTimeout,
)
from mmkd_client.models import (
    Artifact,
    Dataset,
    DatasetLabel,
    Event,
    Job,
    JobSummary,
    LogLine,
    MetricPoint,
    Modality,
    Progress,
)
from mmkd_client.stream import StreamEvent

__all__ = [
    "ApiError",
    "Artifact",
    "AuthError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Dataset",
    "DatasetLabel",
    "Event",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobSummary",
    "LogLine",
    "MetricPoint",
    "MmkdError",
    "Modality",
    "NotFound",
    "Progress",
    "RateLimited",
    "ServerError",
    "StreamEvent",
    "ValidationFailed",
    "WaitTimeout",
]
