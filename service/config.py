"""The API process's settings: the common ones (``settings.Settings``) plus what only the HTTP
side needs. Read once by :func:`get_settings`."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from pydantic import Field, SecretStr

from settings import Settings


class ApiSettings(Settings):
    """Everything the API process needs; defaults give the embedded single-machine setup."""

    auth: bool = Field(default=True, description="Require API keys; off is allowed on loopback only.")
    host: str = Field(default="127.0.0.1", description="Address the API binds to (checked when auth is off).")
    auth_cache_seconds: float = Field(
        default=5.0, ge=0.0, description="Reuse a key check this long; a revoked key stops within it."
    )
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, description="Request bodies above this are 413.")
    threads: int = Field(default=16, ge=1, le=1000, description="Worker threads per process for handlers.")
    max_queued_per_owner: int = Field(
        default=1000, ge=1, description="Queued jobs one owner may have; a submit beyond it is a 429."
    )
    stream_poll_seconds: float = Field(
        default=0.5, gt=0.0, le=60.0, description="How often a live job stream reads what its job gained."
    )
    max_streams_per_owner: int = Field(
        default=32, ge=1, description="Live streams one owner may hold open per API process; one more is a 429."
    )
    metrics_public: bool = Field(
        default=True,
        description="Serve /metrics without a key (it names no owner, job or spec); off: any valid key.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Signs the dashboard's session cookies; required for sign-in when auth is on (the same "
        "value on every API process).",
    )
    session_max_age_seconds: int = Field(
        default=12 * 3600, ge=60, description="A dashboard session lasts this long after sign-in."
    )

    @property
    def bound_to_loopback(self) -> bool:
        """Whether ``host`` only accepts local connections."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@lru_cache(maxsize=1)
def get_settings() -> ApiSettings:
    """The API process's settings, read from the environment on first use."""
    return ApiSettings()
