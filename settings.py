"""Settings every mmkd process shares (prefix ``MMKD_``): where the database, broker and storage are,
and the rules every side enforces alike. The API (``service.config``) and the worker
(``worker.config``) each add only their own part; nothing below them imports those."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """The common part; defaults give the embedded single-machine setup."""

    model_config = SettingsConfigDict(env_prefix="MMKD_", extra="ignore")

    home: Path = Field(default=Path(".mmkd"), description="Folder for the embedded database, broker, files.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite under home.")
    broker_url: str | None = Field(default=None, description="Celery broker; default kombu SQLAlchemy/SQLite.")
    storage_url: str | None = Field(default=None, description="s3://bucket/prefix, file:///path or a path.")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto).")
    storage_max_attempts: int = Field(default=5, ge=1, le=20, description="boto3 attempts per S3 request.")
    storage_timeout_seconds: float = Field(default=10.0, gt=0.0, description="S3 connect/read timeout.")
    max_attempts: int = Field(default=3, ge=1, le=100, description="Deliveries of one job before it fails.")
    lease_seconds: int = Field(default=120, ge=5, description="How long a worker's claim on a job lasts.")
    db_pool_size: int = Field(default=10, ge=1, le=200, description="Connections kept per process.")
    db_pool_timeout_seconds: float = Field(
        default=3.0, gt=0.0, le=60.0, description="Wait this long for a pooled connection, then give up (API: 503)."
    )
    enqueue_timeout_seconds: float = Field(default=2.0, gt=0.0, description="Give up publishing after this.")
    data_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Prefixes (s3://bucket/prefix or /abs/path) under which a spec may name raw data; "
        "comma- or space-separated. Empty: specs name datasets by id or built-in name only.",
    )
    max_dataset_bytes: int = Field(
        default=2 * 1024**3, ge=1024, description="Largest dataset file accepted (upload or read)."
    )
    max_sharded_dataset_bytes: int = Field(
        default=256 * 1024**3,
        ge=1024,
        le=4 * 1024**4,
        description="Largest sharded dataset (all its files together) an upload may send; each .npz shard "
        "stays within MMKD_MAX_DATASET_BYTES.",
    )
    max_procs_per_node: int = Field(
        default=8, ge=1, le=64, description="The most processes one job may run on a worker's host (resources)."
    )
    gpus_per_node: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="GPUs each worker host offers; a job with resources.device cuda may use at most these. "
        "Unset: not checked.",
    )
    ray_address: str | None = Field(
        default=None,
        description="The Ray cluster's head (host:port of its GCS, e.g. ray-head:6379) on which jobs with "
        "resources.nodes > 1 run, this worker being the driver; unset: such jobs are refused.",
    )

    @field_validator("data_allow", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        """Accept ``MMKD_DATA_ALLOW`` as a plain comma- or space-separated list."""
        return value.replace(",", " ").split() if isinstance(value, str) else value

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


@lru_cache(maxsize=1)
def get_common_settings() -> Settings:
    """The shared settings alone (for tools that are neither the API nor a worker)."""
    return Settings()
