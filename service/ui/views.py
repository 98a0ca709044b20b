"""What the dashboard's pages show, shaped from the domain's rows: job rows with their student metric
and duration, a job's view, its events, artifacts and series, the spec differences of compared
runs, and the built-in datasets. No FastAPI here."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.metrics import PRIMARY_METRIC
from jobs import queries
from jobs.errors import InvalidRequestError, NotFoundError
from jobs.models import Artifact, Job, MetricPoint
from jobs.status import JobStatus
from storage.store import ArtifactStore

PAGE = 50
#: The compare page draws at most this many points per run.
MAX_POINTS = 50_000
#: Report images shown inline are at most this large.
MAX_INLINE_BYTES = 8 << 20
MAX_COMPARED = 6


@dataclass(frozen=True)
class ProbeSet:
    """One modality set of a probe's diagnosis, as shown."""

    label: str
    general_share: str
    decisive_general_share: str
    weighted_r2: str


@dataclass(frozen=True)
class ProbeView:
    """A probe job's figures (``kind: probe``), as its page shows them."""

    verdict: str
    metric: str
    teacher: str
    reachable: str
    student: str
    room: str
    weighted_r2: str
    sets: list[ProbeSet]


@dataclass(frozen=True)
class JobView:
    """A job as a page shows it."""

    id: int
    name: str
    status: str
    status_reason: str | None
    method: str
    dataset: str
    task: str
    step: int
    total_steps: int | None
    epoch: int
    total_epochs: int | None
    percent: float | None
    eta: str
    duration: str
    student: str
    gain: str
    spec_json: str
    finished: bool
    error: str | None
    probe: ProbeView | None = None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _figure(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "—"


def probe_view(result: dict[str, Any]) -> ProbeView | None:
    """The figures of a probe's result; None for any other result."""
    if result.get("kind") != "probe":
        return None
    metric = next(iter(result.get("teacher_val") or {}), "")

    def val(key: str) -> str:
        return _figure((result.get(key) or {}).get(metric), 4)

    sets = [
        ProbeSet(
            label=str(label),
            general_share=_figure(row.get("general_share")),
            decisive_general_share=_figure(row.get("decisive_general_share")),
            weighted_r2=_figure(row.get("weighted_r2")),
        )
        for label, row in (result.get("sets") or {}).items()
        if isinstance(row, dict)
    ]
    room = result.get("room")
    return ProbeView(
        verdict=str(result.get("verdict", "")),
        metric=metric,
        teacher=val("teacher_val"),
        reachable=val("reachable_val"),
        student=val("student_val"),
        room=f"{room:+.4f}" if isinstance(room, int | float) else "—",
        weighted_r2=_figure(result.get("weighted_r2")),
        sets=sets,
    )


def job_view(job: Job) -> JobView:
    """The page's view of ``job``."""
    spec = job.spec or {}
    dataset = spec.get("dataset") or {}
    task = str(spec.get("task", "classification"))
    end = job.finished_at or dt.datetime.now(dt.UTC)
    duration = (end - job.started_at).total_seconds() if job.started_at else None
    percent = 100.0 * (job.step or 0) / job.total_steps if job.total_steps else None
    result = job.result or {}
    metric = PRIMARY_METRIC.get(task, "accuracy")
    student = (result.get("student") or {}).get(metric)
    if student is None:
        student = (job.latest_metrics or {}).get(f"val/student/{metric}")
    gain = result.get("gain")
    return JobView(
        id=job.id,
        name=job.name,
        status=job.status.value,
        status_reason=job.status_reason,
        method=str((spec.get("method") or {}).get("name", "")),
        dataset=str(dataset.get("name") or (f"dataset {dataset['id']}" if dataset.get("id") else "uri")),
        task=task,
        step=job.step or 0,
        total_steps=job.total_steps,
        epoch=job.epoch or 0,
        total_epochs=job.total_epochs,
        percent=100.0 if job.status is JobStatus.SUCCEEDED else percent,
        eta=_duration(job.eta_seconds) if job.eta_seconds is not None and not job.status.terminal else "",
        duration=_duration(duration),
        student=f"{metric} {student:.4f}" if isinstance(student, int | float) else "",
        gain=f"{gain['value']:+.4f}" if isinstance(gain, dict) and isinstance(gain.get("value"), int | float) else "",
        spec_json=json.dumps(spec, indent=2, sort_keys=True),
        finished=job.status.terminal,
        error=job.error,
        probe=probe_view(result),
    )


def job_rows(
    session: Session, *, owner_id: int, statuses: list[JobStatus], name: str, before: int | None
) -> tuple[list[JobView], int | None]:
    """A page of the owner's jobs, newest first, filtered by status and by a name fragment."""
    jobs, next_before = queries.list_jobs(
        session, owner_id=owner_id, statuses=list(statuses), limit=PAGE, before_id=before, name=name
    )
    return [job_view(job) for job in jobs], next_before


def event_rows(session: Session, job_id: int) -> list[dict[str, Any]]:
    """The job's events for the timeline, as the stream sends them."""
    return [
        {"id": e.id, "at": e.at.isoformat(), "kind": e.kind, "reason": e.reason, "data": e.data}
        for e in queries.list_events(session, job_id=job_id)
    ]


def artifacts(session: Session, job_id: int) -> list[Artifact]:
    """The job's artifacts, oldest first."""
    return queries.list_artifacts(session, job_id=job_id)


def inline_image(store: ArtifactStore, artifact: Artifact) -> bytes:
    """A report's PNG, read through the store (bounded)."""
    if artifact.kind != "report" or not artifact.key.endswith(".png"):
        raise NotFoundError(f"artifact {artifact.id} is not a report image")
    if (artifact.size_bytes or 0) > MAX_INLINE_BYTES:
        raise NotFoundError(f"artifact {artifact.id} is too large to show")
    return store.get_bytes(artifact.key)


def local_file(store: ArtifactStore, artifact: Artifact) -> Path:
    """The artifact's file in a local store."""
    path = store.local_path(artifact.key)
    if path is None or not path.is_file():
        raise NotFoundError(f"artifact {artifact.id} is recorded but its file is missing")
    return path


def series_of(session: Session, job_id: int) -> dict[str, dict[str, list[float]]]:
    """The job's points by series name: ``{name: {"step": [...], "value": [...]}}``."""
    rows = session.execute(
        select(MetricPoint.name, MetricPoint.step, MetricPoint.value)
        .where(MetricPoint.job_id == job_id)
        .order_by(MetricPoint.step, MetricPoint.id)
        .limit(MAX_POINTS)
    ).all()
    series: dict[str, dict[str, list[float]]] = {}
    for name, step, value in rows:
        entry = series.setdefault(name, {"step": [], "value": []})
        entry["step"].append(step)
        entry["value"].append(value)
    return series


def parse_ids(text: str) -> list[int]:
    """The compare page's ``ids``: two to six distinct job ids, comma-separated."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not all(part.isascii() and part.isdigit() and len(part) <= 10 for part in parts):
        raise InvalidRequestError([{"path": "query.ids", "message": "must be job ids separated by commas"}])
    ids = list(dict.fromkeys(int(part) for part in parts))
    if not 2 <= len(ids) <= MAX_COMPARED:
        raise InvalidRequestError([{"path": "query.ids", "message": f"name 2 to {MAX_COMPARED} different jobs"}])
    return ids


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        found: dict[str, Any] = {}
        for key, item in value.items():
            found.update(_leaves(item, f"{prefix}.{key}" if prefix else str(key)))
        return found
    return {prefix: value}


def spec_diff(jobs: list[Job]) -> list[tuple[str, list[str]]]:
    """The spec fields (dotted paths) whose values differ between ``jobs``, each job's value."""
    leaves = [_leaves(job.spec or {}) for job in jobs]
    paths = sorted(set().union(*leaves))
    missing = object()
    rows = []
    for path in paths:
        values = [leaf.get(path, missing) for leaf in leaves]
        if any(value != values[0] for value in values[1:]):
            rows.append((path, ["—" if v is missing else json.dumps(v) for v in values]))
    return rows


@lru_cache(maxsize=1)
def builtin_datasets() -> list[dict[str, Any]]:
    """The datasets shipped with mmkd: name, samples and modalities (read once)."""
    from core.data import builtin
    from core.data.summary import summarise_npz

    folder = Path(builtin.__file__).parent
    shown = []
    for name in ("mfeat", "basic_motions"):
        summary = summarise_npz(name, folder / f"{name}.npz")
        modalities = {key: value.get("shape") for key, value in summary.modalities.items()}
        shown.append({"name": name, "n_samples": summary.n_samples, "modalities": modalities})
    return shown
