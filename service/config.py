"""Service settings from the environment (prefix ``MMKD_``), read once by :func:`get_settings`."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the API process needs; defaults give the embedded single-machine setup."""

    model_config = SettingsConfigDict(env_prefix="MMKD_", extra="ignore")

    home: Path = Field(default=Path(".mmkd"), description="Folder for the embedded database, broker, files.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite under home.")
    broker_url: str | None = Field(
        default=None, description="Celery broker; default kombu SQLAlchemy/SQLite."
    )
    storage_url: str | None = Field(default=None, description="s3://bucket/prefix or file:///path.")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto).")
    auth: bool = Field(default=True, description="Require API keys; off is allowed on loopback only.")
    host: str = Field(default="127.0.0.1", description="Address the API binds to (checked when auth is off).")
    auth_cache_seconds: float = Field(
        default=5.0, ge=0.0, description="Reuse a key check this long; a revoked key stops within it."
    )
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, description="Request bodies above this are 413.")
    max_attempts: int = Field(default=3, ge=1, le=100, description="Deliveries of one job before it fails.")
    lease_seconds: int = Field(default=120, ge=5, description="How long a worker's claim on a job lasts.")
    db_pool_size: int = Field(default=10, ge=1, le=200, description="Connections kept per process.")
    threads: int = Field(default=16, ge=1, le=1000, description="Worker threads per process for handlers.")
    enqueue_timeout_seconds: float = Field(default=2.0, gt=0.0, description="Give up publishing after this.")

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to ``sqlite:///<home>/mmkd.db``."""
        return self.database_url or f"sqlite:///{self.home.resolve() / 'mmkd.db'}"

    @property
    def resolved_broker_url(self) -> str:
        """The broker URL, defaulting to kombu's SQLAlchemy transport on ``<home>/broker.db``."""
        return self.broker_url or f"sqla+sqlite:///{self.home.resolve() / 'broker.db'}"

    @property
    def resolved_storage_url(self) -> str:
        """The artifact store, defaulting to the local folder ``<home>/artifacts``."""
        return self.storage_url or (self.home.resolve() / "artifacts").as_uri()

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
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()
