"""What the datasets endpoints take and return. The summary is what the upload's checks found."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.dataset_uploads import MAX_UPLOAD_FILES, UploadPlan
from jobs.models import Dataset

#: Names are labels for people; they never reach a path or a key.
DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$"
#: A shard's file name: it becomes the last segment of a key in the dataset's folder.
SHARD_FILE = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}\.(npz|npy)$"


class ModalityOut(BaseModel):
    """One modality: its per-sample shape ((F,) vectors, (C, L) sequences) and stored dtype."""

    shape: list[int]
    dtype: str


class LabelOut(BaseModel):
    """The label as the file holds it: integer classes, 0/1 rows (multilabel) or other numbers."""

    kind: Literal["classes", "multilabel", "continuous"]
    shape: list[int] = Field(description="Per-sample shape: [] for one value, [K] for K values.")
    labelled: int = Field(description="Samples with a label (-1 or NaN mark the others).")
    classes: int | None = Field(default=None, description="classes only: number of classes.")


class ShardsOut(BaseModel):
    """A sharded dataset's layout: .npz shards, or one .npy file per array."""

    layout: Literal["npz", "npy"]
    files: int


class DatasetOut(BaseModel):
    """An uploaded dataset and what its validation found."""

    id: int
    name: str
    size_bytes: int = Field(description="The file's size; a sharded dataset's files together.")
    sha256: str = Field(description="The file's SHA-256; a sharded dataset's: of its files' names and sizes.")
    n_samples: int
    modalities: dict[str, ModalityOut]
    label: LabelOut | None = Field(description="None: no label array (retrieval only).")
    splits: dict[str, int] | None = Field(description="Samples per split in the file; None: split at training.")
    shards: ShardsOut | None = Field(default=None, description="A sharded dataset's layout; None: one .npz file.")
    created_at: dt.datetime

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetOut:
        """Build from the ORM row."""
        return cls(
            id=dataset.id,
            name=dataset.name,
            size_bytes=dataset.size_bytes,
            sha256=dataset.sha256,
            n_samples=dataset.n_samples,
            modalities=dataset.summary["modalities"],
            label=dataset.summary.get("label"),
            splits=dataset.summary.get("splits"),
            shards=dataset.summary.get("shards"),
            created_at=dataset.created_at,
        )


class DatasetPage(BaseModel):
    """One page of datasets, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[DatasetOut]
    next_cursor: str | None


class FileRequest(BaseModel):
    """One file of a folder of shards."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SHARD_FILE, description="Its name in the folder (.npz shards, or <array>.npy).")
    size_bytes: int = Field(ge=1, le=2**53 - 1, description="The file's exact size.")


class UploadRequest(BaseModel):
    """Ask for a presigned multipart upload of one .npz (``size_bytes``), or of a folder of shards
    (``files``: every .npz shard, or one .npy per array), each file a multipart upload of its own."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["size_bytes"]}, {"required": ["files"]}]}
    )

    name: str = Field(pattern=DATASET_NAME, description="A label for the dataset.")
    size_bytes: int | None = Field(
        default=None,
        ge=1,
        le=2**53 - 1,
        description="One file's exact size (MMKD_MAX_DATASET_BYTES at most, else a 413).",
    )
    files: list[FileRequest] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_UPLOAD_FILES,
        description="A folder of shards, each file once, all .npz or all .npy: each .npz (and label/split/"
        "class_names .npy) within MMKD_MAX_DATASET_BYTES, all within MMKD_MAX_SHARDED_DATASET_BYTES (else a 413).",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> UploadRequest:
        if (self.size_bytes is None) == (self.files is None):
            raise ValueError("give size_bytes (one .npz) or files (a folder of shards), one of the two")
        return self


class PartUrl(BaseModel):
    """Where to PUT one part (bytes ``(n-1) * part_size`` up to ``n * part_size``)."""

    part_number: int
    url: str


class FileUrls(BaseModel):
    """Where to PUT the parts of one file of a sharded upload."""

    name: str
    size_bytes: int
    parts: list[PartUrl]


class UploadOut(BaseModel):
    """A multipart upload: PUT each part to its URL, keep each answer's ETag header, then complete."""

    id: int
    name: str
    size_bytes: int = Field(description="The file's size; a sharded upload's files together.")
    part_size: int
    parts: list[PartUrl] = Field(description="The one file's parts; empty for a sharded upload.")
    files: list[FileUrls] | None = Field(default=None, description="A sharded upload's files and their parts.")
    expires_at: dt.datetime
    complete: str = Field(description="POST the parts' ETags here.")

    @classmethod
    def of(cls, plan: UploadPlan) -> UploadOut:
        """Build from the domain's plan."""
        upload = plan.upload
        files = None
        if upload.files is not None:
            files = [FileUrls(name=f.name, size_bytes=f.size_bytes, parts=_parts(f.part_urls)) for f in plan.files]
        return cls(
            id=upload.id,
            name=upload.name,
            size_bytes=upload.size_bytes,
            part_size=upload.part_size,
            parts=_parts(plan.part_urls),
            files=files,
            expires_at=plan.expires_at,
            complete=f"/v1/datasets/uploads/{upload.id}/complete",
        )


def _parts(urls: list[str]) -> list[PartUrl]:
    return [PartUrl(part_number=n, url=url) for n, url in enumerate(urls, start=1)]


class PartDone(BaseModel):
    """One uploaded part: its number and the ETag S3 answered with."""

    model_config = ConfigDict(extra="forbid")

    part_number: int = Field(ge=1, le=1_000)
    etag: str = Field(min_length=1, max_length=200)


class FileDone(BaseModel):
    """Every part of one file of a sharded upload."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SHARD_FILE)
    parts: list[PartDone] = Field(min_length=1, max_length=1_000)


class CompleteRequest(BaseModel):
    """Every part of the upload, by number: ``parts`` for one file, ``files`` for a folder of shards."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["parts"]}, {"required": ["files"]}]}
    )

    parts: list[PartDone] | None = Field(default=None, min_length=1, max_length=1_000)
    files: list[FileDone] | None = Field(default=None, min_length=1, max_length=MAX_UPLOAD_FILES)

    @field_validator("files")
    @classmethod
    def _each_once(cls, files: list[FileDone] | None) -> list[FileDone] | None:
        names = [file.name for file in files or []]
        if len(set(names)) != len(names):
            raise ValueError("name each file of the upload once")
        return files

    @model_validator(mode="after")
    def _one_kind(self) -> CompleteRequest:
        if (self.parts is None) == (self.files is None):
            raise ValueError("give parts (one file) or files (a folder of shards), one of the two")
        return self
