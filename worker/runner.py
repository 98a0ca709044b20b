"""One delivery of the train task: claim the job, train it under a heartbeat, publish what it made,
and record how it ended. Everything the job writes to the database is conditional on still
holding the lease, so a worker that lost its job never overwrites the new owner's progress.

The heartbeat renews the lease only while training makes progress; it fails a stalled or
timed-out attempt itself and then ends this process (:func:`exit_stuck_process`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.errors import MmkdError
from core.metrics import Point, series, to_jsonl
from core.spec import JobSpec
from jobs.db import engine_for, session_factory
from jobs.leases import Heartbeat, Lease, LeaseLost, Liveness, claim, new_lease_owner
from jobs.lifecycle import record_artifact, transition
from jobs.models import Job, MetricPoint, Study
from jobs.orm import utcnow
from jobs.publish import publisher
from jobs.status import JobStatus
from storage.checkpoints import StorageCheckpointStore
from storage.objects import StoredObject
from storage.store import ArtifactStore, store_from_settings
from studies.pruning import TrialPruning, trial_pruning
from studies.service import advance_and_publish
from worker import outcomes, telemetry
from worker.config import WorkerSettings, get_worker_settings
from worker.data import job_dataset, job_reader
from worker.joblog import JobLog
from worker.report import write_report
from worker.tracking import DatabaseTracker, LeasedCheckpoints

if TYPE_CHECKING:
    from core.data.prepare import PreparedData

log = logging.getLogger(__name__)
#: The exit status of a worker process ended because its training attempt was stuck.
EXIT_STUCK = 75


@lru_cache(maxsize=1)
def _sessions(url: str) -> sessionmaker[Session]:
    return session_factory(engine_for(url, pool_size=2))


def run_job(job_id: int, *, end_stuck_attempt: Callable[[], None] | None = None) -> str:
    """Handle one delivery of ``job_id``; returns the outcome (``skipped`` for a duplicate).

    ``end_stuck_attempt`` runs after the heartbeat failed a stalled or timed-out attempt; the
    default, :func:`exit_stuck_process`, ends this process so a hung step cannot keep the GPU.
    """
    settings = get_worker_settings()
    sessions = _sessions(settings.resolved_database_url)
    with sessions() as session:
        lease = claim(session, job_id=job_id, owner=new_lease_owner(), lease_seconds=settings.lease_seconds)
    if lease is None:
        log.info("job %s is not queued (duplicate delivery, cancelled or finished): skipped", job_id)
        return "skipped"
    beat = Heartbeat(
        sessions,
        lease,
        lease_seconds=settings.lease_seconds,
        interval=settings.resolved_heartbeat_seconds,
        liveness=Liveness(stall_seconds=settings.stall_seconds, busy_seconds=settings.busy_seconds),
        on_give_up=end_stuck_attempt or exit_stuck_process,
        on_renewed=telemetry.LEASE_RENEWALS.inc,
    )
    telemetry.JOBS_STARTED.inc()
    workdir = settings.resolved_work_dir / f"job-{job_id}-attempt-{lease.attempt}"
    job_log = _job_log(settings, sessions, lease)
    with beat, job_log:
        try:
            outcome = _train_and_publish(settings, sessions, lease, beat, workdir, job_log)
        except Exception as error:
            job_log.store(store_from_settings(settings))  # before the outcome: a failed job lists its log
            outcome = _record_failure(sessions, lease, beat, error)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    job_log.path.unlink(missing_ok=True)
    telemetry.JOBS_FINISHED.labels(outcome).inc()
    if outcome == "queued":
        _publish_retry(settings, job_id)
    elif outcome != "lease_lost":
        _advance_study(settings, sessions, job_id)
    log.info("job %s attempt %s: %s", job_id, lease.attempt, outcome)
    return outcome


def _job_log(settings: WorkerSettings, sessions: sessionmaker[Session], lease: Lease) -> JobLog:
    """The attempt's log capture: lines to the database as it runs, the whole file stored with the outcome.
    It writes even after a lost lease: its lines carry their attempt, so the new owner's stay apart."""
    return JobLog(
        sessions,
        job_id=lease.job_id,
        attempt=lease.attempt,
        path=settings.resolved_work_dir / f"job-{lease.job_id}-attempt-{lease.attempt}.log",
        flush_seconds=settings.log_flush_seconds,
        tail_lines=settings.log_tail_lines,
        max_bytes=settings.max_log_bytes,
    )


def exit_stuck_process() -> None:
    """End this process now: its training thread is stuck where no exception reaches it, holding the
    GPU. The job is already failed; under Celery's prefork pool a fresh child replaces this one, and
    the message, rejected because its worker was lost, comes back only to be skipped."""
    log.critical("worker process %s ends: its training attempt is stuck", os.getpid())
    logging.shutdown()
    os._exit(EXIT_STUCK)


def _record_failure(sessions: sessionmaker[Session], lease: Lease, beat: Heartbeat, error: Exception) -> str:
    if beat.lost.is_set():  # the job is no longer ours, or the heartbeat already failed it
        log.warning("job %s attempt %s: lease lost (%s); nothing recorded", lease.job_id, lease.attempt, error)
        return "lease_lost"
    ending = outcomes.classify(error, attempt=lease.attempt, max_attempts=lease.max_attempts)
    telemetry.FAILURES.labels(ending.kind).inc()
    unexpected = ending.kind == "internal"
    log.warning("job %s attempt %s: %s", lease.job_id, lease.attempt, ending.reason, exc_info=unexpected)
    return outcomes.record(sessions, lease, ending)


def _publish_retry(settings: WorkerSettings, job_id: int) -> None:
    try:
        publisher(settings)(job_id, countdown=settings.retry_delay_seconds)
    except Exception:  # the job is queued in the database; the reaper publishes it again later
        log.exception("job %s: publishing the retry failed", job_id)


def _advance_study(settings: WorkerSettings, sessions: sessionmaker[Session], job_id: int) -> None:
    """A study's job ended: move its study on now (the next trial, the finalists, the result). A failure
    here loses nothing: the reaper advances every running study on its passes."""
    with sessions() as session:
        study_id = session.scalar(select(Job.study_id).where(Job.id == job_id))
        session.commit()
        if study_id is None:
            return
        try:
            advance_and_publish(
                session,
                study_id=study_id,
                database_url=settings.resolved_database_url,
                max_attempts=settings.max_attempts,
                enqueue=publisher(settings),
            )
        except Exception:
            log.exception("job %s: advancing its study %s failed; the reaper will", job_id, study_id)


def _trial_pruning(settings: WorkerSettings, sessions: sessionmaker[Session], job_id: int) -> TrialPruning | None:
    """The pruner of a study's trial job; None for any other job (a finalist is never pruned)."""
    with sessions() as session:
        row = session.execute(
            select(Job.trial_number, Job.seed, Study.spec, Study.optuna_name)
            .join(Study, Study.id == Job.study_id)
            .where(Job.id == job_id)
        ).one_or_none()
    if row is None or row.trial_number is None:
        return None
    return trial_pruning(
        study_spec=row.spec,
        optuna_name=row.optuna_name,
        trial_number=row.trial_number,
        seed=row.seed,
        database_url=settings.resolved_database_url,
    )


def _train_and_publish(
    settings: WorkerSettings,
    sessions: sessionmaker[Session],
    lease: Lease,
    beat: Heartbeat,
    workdir: Path,
    job_log: JobLog,
) -> str:
    with beat.liveness.busy("preparing the job"):
        from core.engine.trainer import train  # torch loads here

        spec, store, data = _prepare(settings, sessions, lease.job_id)
        pruning = _trial_pruning(settings, sessions, lease.job_id)
    beat.liveness.limit(spec.train.max_minutes)
    tracker = DatabaseTracker(
        sessions,
        job_id=lease.job_id,
        lease_owner=lease.owner,
        lease_lost=beat.lost,
        liveness=beat.liveness,
        flush_seconds=settings.metrics_flush_seconds,
        poll_seconds=settings.cancel_poll_seconds,
        pruning=pruning,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    if spec.kind == "probe":
        return _probe_and_publish(sessions, store, lease, beat, workdir, job_log, spec, data, tracker)
    stored_checkpoints = StorageCheckpointStore(store, lease.job_id, keep_last=spec.checkpoint.keep_last)
    checkpoints = LeasedCheckpoints(stored_checkpoints, lease_lost=beat.lost)
    if spec.resources.nodes > 1:  # Ray Train's workers on the cluster, this process the driver
        from worker.ranks import train_on_ray

        if settings.ray_address is None:
            raise MmkdError("resources.nodes > 1 needs a Ray cluster, and this worker has no MMKD_RAY_ADDRESS")
        summary = train_on_ray(
            spec,
            data,
            tracker=tracker,
            checkpoints=checkpoints,
            workdir=workdir,
            address=settings.ray_address,
            restarts=settings.rank_restarts,
            name=f"mmkd-job-{lease.job_id}-attempt-{lease.attempt}",
        )
    elif spec.resources.procs_per_node > 1:  # torchrun's ranks, reporting through this process
        from worker.ranks import train_on_ranks

        summary = train_on_ranks(
            spec, data, tracker=tracker, checkpoints=checkpoints, workdir=workdir, restarts=settings.rank_restarts
        )
    else:
        summary = train(spec, workdir=workdir, tracker=tracker, checkpoints=checkpoints, data=data)
    if beat.lost.is_set():
        raise LeaseLost("lease lost before the results were published")
    with beat.liveness.busy("publishing the results"), telemetry.UPLOAD_SECONDS.time():
        stored = publish_results(sessions, store, lease.job_id, workdir, summary)
        log_object = job_log.upload(store)  # recorded with the success, so a succeeded job lists it
    stored += [("log", log_object)] if log_object is not None else []
    return _record_success(sessions, lease, summary, stored)


def _probe_and_publish(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    lease: Lease,
    beat: Heartbeat,
    workdir: Path,
    job_log: JobLog,
    spec: JobSpec,
    data: PreparedData,
    tracker: DatabaseTracker,
) -> str:
    """A ``kind: probe`` job: the distillability probe, its figures as the result and as ``probe.json``.
    It keeps no checkpoint (it is minutes long): a retried attempt probes again from the start."""
    from core.engine.probe import probe

    summary = probe(spec, data=data, tracker=tracker)
    if beat.lost.is_set():
        raise LeaseLost("lease lost before the results were published")
    with beat.liveness.busy("publishing the results"), telemetry.UPLOAD_SECONDS.time():
        (workdir / "probe.json").write_text(json.dumps(summary, indent=2))
        stored = [("summary", store.put_file(f"jobs/{lease.job_id}/probe.json", workdir / "probe.json"))]
        log_object = job_log.upload(store)
    stored += [("log", log_object)] if log_object is not None else []
    return _record_success(sessions, lease, summary, stored)


def _prepare(
    settings: WorkerSettings, sessions: sessionmaker[Session], job_id: int
) -> tuple[JobSpec, ArtifactStore, PreparedData]:
    """The job's spec, the artifact store and the dataset, read through the store and the allow-list."""
    from core.data import prepare

    with sessions() as session:
        spec_json, owner_id, queued_at = session.execute(
            select(Job.spec, Job.owner_id, Job.queued_at).where(Job.id == job_id)
        ).one()
    if queued_at is not None:
        telemetry.QUEUE_WAIT_SECONDS.observe(max((utcnow() - queued_at).total_seconds(), 0.0))
    spec = JobSpec.model_validate(spec_json)
    store = store_from_settings(settings)
    read = job_reader(settings, store, sessions, owner_id=owner_id)
    dataset, folders = job_dataset(settings, sessions, spec.dataset, owner_id=owner_id)
    data = prepare(dataset, spec.task, max_bytes=settings.max_dataset_bytes, read=read, open_shards=folders)
    return spec, store, data


def metric_points(sessions: sessionmaker[Session], job_id: int) -> list[Point]:
    """The job's metric record: its points in the database, by step, in the order they were written."""
    with sessions() as session:
        rows = session.execute(
            select(MetricPoint.step, MetricPoint.epoch, MetricPoint.name, MetricPoint.value)
            .where(MetricPoint.job_id == job_id)
            .order_by(MetricPoint.step, MetricPoint.id)
        ).all()
    return [Point(*row) for row in rows]


def publish_results(
    sessions: sessionmaker[Session], store: ArtifactStore, job_id: int, workdir: Path, summary: dict[str, Any]
) -> list[tuple[str, StoredObject]]:
    """Render ``metrics.jsonl`` and the report once from the database's points, then upload everything."""
    points = metric_points(sessions, job_id)
    (workdir / "metrics.jsonl").write_text(to_jsonl(points))
    write_report(workdir, summary, series(points), job_id=job_id)
    return upload_results(store, job_id, workdir)


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
