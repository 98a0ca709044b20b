"""What the datasets endpoints take and return. The summary is what the upload's checks found."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.dataset_uploads import UploadPlan
from jobs.models import Dataset

#: Names are labels for people; they never reach a path or a key.
DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$"


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


class DatasetOut(BaseModel):
    """An uploaded dataset and what its validation found."""

    id: int
    name: str
    size_bytes: int
    sha256: str
    n_samples: int
    modalities: dict[str, ModalityOut]
    label: LabelOut | None = Field(description="None: no label array (retrieval only).")
    splits: dict[str, int] | None = Field(description="Samples per split in the file; None: split at training.")
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
            created_at=dataset.created_at,
        )


class DatasetPage(BaseModel):
    """One page of datasets, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    items: list[DatasetOut]
    next_cursor: str | None


class UploadRequest(BaseModel):
    """Ask for a presigned multipart upload of a file of ``size_bytes``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=DATASET_NAME, description="A label for the dataset.")
    size_bytes: int = Field(
        ge=1, le=2**53 - 1, description="The file's exact size (MMKD_MAX_DATASET_BYTES at most, else a 413)."
    )


class PartUrl(BaseModel):
    """Where to PUT one part (bytes ``(n-1) * part_size`` up to ``n * part_size``)."""

    part_number: int
    url: str


class UploadOut(BaseModel):
    """A multipart upload: PUT each part to its URL, keep each answer's ETag header, then complete."""

    id: int
    name: str
    size_bytes: int
    part_size: int
    parts: list[PartUrl]
    expires_at: dt.datetime
    complete: str = Field(description="POST the parts' ETags here.")

    @classmethod
    def of(cls, plan: UploadPlan) -> UploadOut:
        """Build from the domain's plan."""
        upload = plan.upload
        return cls(
            id=upload.id,
            name=upload.name,
            size_bytes=upload.size_bytes,
            part_size=upload.part_size,
            parts=[PartUrl(part_number=n, url=url) for n, url in enumerate(plan.part_urls, start=1)],
            expires_at=plan.expires_at,
            complete=f"/v1/datasets/uploads/{upload.id}/complete",
        )


class PartDone(BaseModel):
    """One uploaded part: its number and the ETag S3 answered with."""

    model_config = ConfigDict(extra="forbid")

    part_number: int = Field(ge=1, le=1_000)
    etag: str = Field(min_length=1, max_length=200)


class CompleteRequest(BaseModel):
    """Every part of the upload, by number."""

    model_config = ConfigDict(extra="forbid")

    parts: list[PartDone] = Field(min_length=1, max_length=1_000)
