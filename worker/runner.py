"""One delivery of the train task: claim the job, train it under a heartbeat, publish what it made,
and record how it ended. Everything the job writes to the database is conditional on still
holding the lease, so a worker that lost its job never overwrites the new owner's progress."""

from __future__ import annotations

import json
import logging
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.spec import JobSpec
from jobs.db import engine_for, session_factory
from jobs.leases import Heartbeat, Lease, claim, new_lease_owner
from jobs.lifecycle import record_artifact, transition
from jobs.models import Job, MetricPoint
from jobs.publish import publisher
from jobs.status import JobStatus
from storage.checkpoints import StorageCheckpointStore
from storage.store import ArtifactStore, StoredObject, store_from_settings
from worker import outcomes
from worker.config import WorkerSettings, get_worker_settings
from worker.data import job_reader
from worker.report import write_report
from worker.tracking import DatabaseTracker

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _sessions(url: str) -> sessionmaker[Session]:
    return session_factory(engine_for(url, pool_size=2))


def run_job(job_id: int) -> str:
    """Handle one delivery of ``job_id``; returns the outcome (``skipped`` for a duplicate)."""
    settings = get_worker_settings()
    sessions = _sessions(settings.resolved_database_url)
    with sessions() as session:
        lease = claim(session, job_id=job_id, owner=new_lease_owner(), lease_seconds=settings.lease_seconds)
    if lease is None:
        log.info("job %s is not queued (duplicate delivery, cancelled or finished): skipped", job_id)
        return "skipped"
    beat = Heartbeat(
        sessions, lease, lease_seconds=settings.lease_seconds, interval=settings.resolved_heartbeat_seconds
    )
    workdir = settings.resolved_work_dir / f"job-{job_id}-attempt-{lease.attempt}"
    with beat:
        try:
            outcome = _train_and_publish(settings, sessions, lease, beat, workdir)
        except Exception as error:
            ending = outcomes.classify(error, attempt=lease.attempt, max_attempts=lease.max_attempts)
            unexpected = ending.kind == "internal"
            log.warning("job %s attempt %s: %s", job_id, lease.attempt, ending.reason, exc_info=unexpected)
            outcome = outcomes.record(sessions, lease, ending)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if outcome == "queued":
        _publish_retry(settings, job_id)
    log.info("job %s attempt %s: %s", job_id, lease.attempt, outcome)
    return outcome


def _publish_retry(settings: WorkerSettings, job_id: int) -> None:
    try:
        publisher(settings)(job_id, countdown=settings.retry_delay_seconds)
    except Exception:  # the job is queued in the database; the reaper publishes it again later
        log.exception("job %s: publishing the retry failed", job_id)


def _train_and_publish(
    settings: WorkerSettings, sessions: sessionmaker[Session], lease: Lease, beat: Heartbeat, workdir: Path
) -> str:
    from core.data import prepare
    from core.engine.tracking_local import FanOutTracker, JsonlTracker
    from core.engine.trainer import train  # torch loads here

    with sessions() as session:
        spec_json, owner_id = session.execute(select(Job.spec, Job.owner_id).where(Job.id == lease.job_id)).one()
    spec = JobSpec.model_validate(spec_json)
    store = store_from_settings(settings)
    read = job_reader(settings, store, sessions, owner_id=owner_id)
    data = prepare(spec.dataset, spec.task, max_bytes=settings.max_dataset_bytes, read=read)
    database = DatabaseTracker(
        sessions,
        job_id=lease.job_id,
        lease_owner=lease.owner,
        lease_lost=beat.lost,
        flush_seconds=settings.metrics_flush_seconds,
        poll_seconds=settings.cancel_poll_seconds,
    )
    checkpoints = StorageCheckpointStore(store, lease.job_id, keep_last=spec.checkpoint.keep_last)
    workdir.mkdir(parents=True, exist_ok=True)
    tracker = FanOutTracker(database, JsonlTracker(workdir / "metrics.jsonl"))
    summary = train(spec, workdir=workdir, tracker=tracker, checkpoints=checkpoints, data=data)
    if summary.get("resumed_from_step"):
        prepend_history(sessions, lease.job_id, workdir / "metrics.jsonl", upto_step=summary["resumed_from_step"])
    write_report(workdir, summary, job_id=lease.job_id)
    stored = upload_results(store, lease.job_id, workdir)
    return _record_success(sessions, lease, summary, stored)


def prepend_history(sessions: sessionmaker[Session], job_id: int, path: Path, *, upto_step: int) -> None:
    """Complete a resumed attempt's metrics.jsonl with the earlier attempts' points (from the database)."""
    with sessions() as session:
        rows = session.execute(
            select(MetricPoint.step, MetricPoint.epoch, MetricPoint.name, MetricPoint.value)
            .where(MetricPoint.job_id == job_id, MetricPoint.step <= upto_step)
            .order_by(MetricPoint.step, MetricPoint.id)
        ).all()
    records: dict[tuple[int, str], dict[str, Any]] = {}
    for step, epoch, name, value in rows:
        kind, metric = name.split("/", 1)
        records.setdefault((step, kind), {"kind": kind, "epoch": epoch, "step": step})[metric] = value
    earlier = "".join(json.dumps(record) + "\n" for record in records.values())
    path.write_text(earlier + (path.read_text() if path.exists() else ""))


def upload_results(store: ArtifactStore, job_id: int, workdir: Path) -> list[tuple[str, StoredObject]]:
    """Upload the student export, summary, metrics and report; returns ``(kind, object)`` pairs."""
    files: list[tuple[str, Path]] = [
        ("student", path) for path in sorted((workdir / "student").rglob("*")) if path.is_file()
    ]
    files += [("summary", workdir / "summary.json"), ("metrics", workdir / "metrics.jsonl")]
    files += [("report", path) for path in sorted((workdir / "report").iterdir())]
    return [
        (kind, store.put_file(f"jobs/{job_id}/{path.relative_to(workdir).as_posix()}", path))
        for kind, path in files
        if path.exists()
    ]


def _record_success(
    sessions: sessionmaker[Session],
    lease: Lease,
    summary: dict[str, Any],
    stored: list[tuple[str, StoredObject]],
) -> str:
    """Artifacts, result and the ``succeeded`` transition in one transaction, if the lease holds."""
    with sessions() as session:
        moved = transition(
            session,
            job_id=lease.job_id,
            to=JobStatus.SUCCEEDED,
            expect={JobStatus.RUNNING, JobStatus.CANCELLING},
            lease_owner=lease.owner,
            reason=f"trained {summary.get('steps')} steps",
            values={"result": summary, "error": None},
        )
        if moved is None:
            session.rollback()
            log.warning("job %s: lease lost before recording success; discarding", lease.job_id)
            return "lease_lost"
        for kind, obj in stored:
            record_artifact(
                session,
                job_id=lease.job_id,
                key=obj.key,
                kind=kind,
                size_bytes=obj.size,
                checksum=f"sha256:{obj.sha256}",
            )
        session.commit()
    return "succeeded"
