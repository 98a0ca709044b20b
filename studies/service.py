"""Study logic on the database: create a study, advance it, cancel it, read its trials. No FastAPI, no
Celery; functions take a SQLAlchemy session and keyword-only arguments, and return the ids of the
jobs to publish once their rows are committed (the caller publishes: ``jobs.lifecycle.enqueue_job``).

A study moves forward by :func:`advance`, which anything may call at any time: the API after
creating it, the worker after one of its jobs ended, the reaper on every pass (so a worker that died
between finishing a trial and advancing its study loses nothing). Under the study's row lock it
tells Optuna how finished trials ended, asks for new trials while the budget and the parallelism
allow, and once every trial is done trains the winner again on every seed with the reference (the
finalists) and records the study's result. Every step derives from rows and trials that exist, so
a crash between two steps is repaired by the next call:
- a trial asked but whose jobs were never committed gets its jobs from the trial's stored values;
- a trial whose jobs all ended but was never told is told now.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Row, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core.errors import MmkdError
from core.spec import JobSpec, describe_validation_error
from jobs.errors import ConflictError, LimitExceededError, NotFoundError
from jobs.lifecycle import enqueue_job, insert_job, transition
from jobs.limits import QUEUED_LIMIT_RETRY_AFTER_SECONDS
from jobs.models import Job, Owner, Study
from jobs.orm import utcnow
from jobs.status import JobStatus, StudyStatus
from migrations.study_storage import study_storage_url
from studies import search
from studies.outcome import study_result, trial_objective
from studies.spec import StudySpec, stored_spec, trial_spec

log = logging.getLogger(__name__)


def study_hash(spec: StudySpec) -> str:
    """SHA-256 of the study spec's canonical JSON: what an idempotent replay must match."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_study(
    session: Session, *, owner_id: int, spec: StudySpec, idempotency_key: str | None, max_queued: int | None = None
) -> tuple[Study, bool]:
    """Insert a running study and commit; returns ``(study, created)``. The same key with the same
    spec returns the first study; with another spec it is a :class:`ConflictError`. With
    ``max_queued``, an owner whose queue has no room for the study's first trials is refused
    (``LimitExceededError``, a 429): the study's jobs count like any other."""
    spec_hash = study_hash(spec)
    if idempotency_key is not None:
        existing = session.scalars(
            select(Study).where(Study.owner_id == owner_id, Study.idempotency_key == idempotency_key)
        ).one_or_none()
        if existing is not None:
            session.commit()
            if existing.request_hash != spec_hash:
                raise ConflictError(
                    f"Idempotency-Key {idempotency_key!r} was already used for study {existing.id} with another body"
                )
            return existing, False
    study = Study(
        owner_id=owner_id,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        spec_hash=spec_hash,
        optuna_name=f"mmkd-{uuid.uuid4().hex}",
        status=StudyStatus.RUNNING,
        idempotency_key=idempotency_key,
        request_hash=spec_hash if idempotency_key else None,
    )
    try:
        if max_queued is not None:  # before the new study is in the session: it is not one of the others
            _check_room(session, owner_id=owner_id, first=spec.parallelism * spec.seeds, max_queued=max_queued)
        session.add(study)
        session.commit()
    except IntegrityError:  # a concurrent create with the same key won the unique constraint: replay it
        session.rollback()
        if idempotency_key is None:
            raise
        return create_study(session, owner_id=owner_id, spec=spec, idempotency_key=idempotency_key)
    except BaseException:
        session.rollback()
        raise
    return study, True


def _check_room(session: Session, *, owner_id: int, first: int, max_queued: int) -> None:
    """Refuse a study whose first trial jobs would take the owner past ``max_queued`` queued jobs. The
    owner's row is locked first (concurrent creates take turns), and the first trials of the owner's
    studies that no advance has queued yet count as queued already."""
    session.execute(select(Owner.id).where(Owner.id == owner_id).with_for_update())
    waiting = select(Job.id).where(Job.owner_id == owner_id, Job.status == JobStatus.QUEUED).limit(max_queued + 1)
    queued = session.scalar(select(func.count()).select_from(waiting.subquery())) or 0
    unadvanced = session.scalars(
        select(Study.spec).where(
            Study.owner_id == owner_id,
            Study.status == StudyStatus.RUNNING,
            ~select(Job.id).where(Job.study_id == Study.id).exists(),
        )
    ).all()
    queued += sum(int(spec["parallelism"]) * int(spec["seeds"]) for spec in unadvanced)
    if queued + first > max_queued:
        raise LimitExceededError(
            f"this owner has {queued} queued jobs and the study's first trials are {first} more, past the most "
            f"allowed (MMKD_MAX_QUEUED_PER_OWNER={max_queued}); lower parallelism or seeds, or try again later",
            retry_after_seconds=QUEUED_LIMIT_RETRY_AFTER_SECONDS,
        )


def get_study(session: Session, *, owner_id: int, study_id: int) -> Study:
    """The owner's study; another owner's study is indistinguishable from a missing one."""
    study = session.scalars(select(Study).where(Study.id == study_id, Study.owner_id == owner_id)).one_or_none()
    if study is None:
        raise NotFoundError(f"no study {study_id}")
    return study


def list_studies(
    session: Session, *, owner_id: int, statuses: list[str], limit: int, before_id: int | None
) -> tuple[list[Study], int | None]:
    """Newest first, filtered by status before the limit; the page and the id to continue before."""
    query = select(Study).where(Study.owner_id == owner_id)
    if statuses:
        query = query.where(Study.status.in_(statuses))
    if before_id is not None:
        query = query.where(Study.id < before_id)
    rows = list(session.scalars(query.order_by(Study.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    return page, (page[-1].id if len(rows) > limit else None)


@dataclass(frozen=True)
class TrialView:
    """One trial as the API shows it: Optuna's record and the jobs that train it."""

    number: int
    state: str
    values: dict[str, Any]
    value: float | None
    last_epoch: int | None
    jobs: list[dict[str, Any]]


def list_trials(session: Session, *, study: Study, database_url: str) -> list[TrialView]:
    """The study's trials in order, with their jobs (waiting trials have none yet)."""
    spec = stored_spec(study.spec)
    jobs = _jobs_by_trial(session, study.id)
    session.commit()
    optuna_study = search.find_study(spec, name=study.optuna_name, storage=_storage(database_url))
    if optuna_study is None:  # created, not advanced yet (the reaper will)
        return []
    views = []
    for trial in optuna_study.get_trials(deepcopy=False):
        epochs = sorted(trial.intermediate_values)
        views.append(
            TrialView(
                number=trial.number,
                state=trial.state.name.lower(),
                values=search.trial_values(spec, trial),
                value=trial.value if trial.state.name == "COMPLETE" else None,
                last_epoch=epochs[-1] if epochs else None,
                jobs=[
                    {"id": row.id, "status": row.status.value, "seed": row.seed} for row in jobs.get(trial.number, [])
                ],
            )
        )
    return views


def advance(session: Session, *, study_id: int, database_url: str, max_attempts: int) -> list[int]:
    """Move the study forward as far as its finished jobs allow (see the module's docstring) and commit;
    returns the ids of the new jobs, for the caller to publish. A study that is not running is left
    alone. The study's row stays locked until the commit, so concurrent callers take turns."""
    row = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.status == StudyStatus.RUNNING)
        .values(updated_at=utcnow())
        .returning(Study.owner_id, Study.spec, Study.optuna_name)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        session.rollback()
        return []
    try:
        created = _Advance(session, study_id, row, database_url, max_attempts).run()
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return created


def advance_and_publish(
    session: Session, *, study_id: int, database_url: str, max_attempts: int, enqueue: Callable[[int], None]
) -> list[int]:
    """:func:`advance`, then publish each new job (a failed publish is an ``enqueue_failed`` event the
    reaper retries, as for any job); returns the new jobs' ids."""
    created = advance(session, study_id=study_id, database_url=database_url, max_attempts=max_attempts)
    for job_id in created:
        enqueue_job(session, job=Job(id=job_id), enqueue=enqueue)
    return created


class _Advance:
    """One advance of one study, under its row lock."""

    def __init__(self, session: Session, study_id: int, row: Row[Any], database_url: str, max_attempts: int) -> None:
        self.session, self.study_id, self.owner_id = session, study_id, row.owner_id
        self.spec = stored_spec(row.spec)
        self.max_attempts = max_attempts
        self.optuna = search.load_study(self.spec, name=row.optuna_name, storage=_storage(database_url))
        self.jobs = _jobs_by_trial(session, study_id)
        self.created: list[int] = []

    def run(self) -> list[int]:
        from optuna.trial import TrialState

        running = 0
        for trial in self.optuna.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            running += not self._settle(trial)
        asked = sum(trial.state != TrialState.WAITING for trial in self.optuna.get_trials(deepcopy=False))
        while asked < self.spec.trials and running < self.spec.parallelism:
            number, values = search.ask(self.optuna, self.spec)
            asked += 1
            running += not self._submit_trial(number, values)
        if asked >= self.spec.trials and running == 0:
            self._finish()
        return self.created

    def _settle(self, trial: Any) -> bool:
        """Bring one running trial up to date; True when it ended (and was told)."""
        from optuna.trial import TrialState

        number = trial.number
        jobs = self.jobs.get(number)
        if not jobs:  # asked, but its jobs were never committed: create them, if the ask completed
            if not trial.user_attrs.get(search.SAMPLED):
                self.optuna.tell(number, state=TrialState.FAIL, skip_if_finished=True)
                return True
            return self._submit_trial(number, search.trial_values(self.spec, trial))
        statuses = [job.status for job in jobs]
        if JobStatus.PRUNED in statuses:
            reason = f"trial {number} was pruned"
            statuses = [
                status if status.terminal else cancel_quietly(self.session, job_id=job.id, reason=reason)
                for job, status in zip(jobs, statuses, strict=True)
            ]
            if all(status.terminal for status in statuses):
                self.optuna.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
                return True
            return False
        if not all(status.terminal for status in statuses):
            return False
        try:
            if set(statuses) != {JobStatus.SUCCEEDED}:
                raise MmkdError("a job of the trial failed or was cancelled")
            scores = [trial_objective(job.result, self.spec.metric) for job in jobs]
        except MmkdError as exc:  # the trial ends failed; the study goes on without it
            log.warning("study %s trial %s: failed: %s", self.study_id, number, exc)
            self.optuna.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        else:
            self.optuna.tell(number, sum(scores) / len(scores), skip_if_finished=True)
        return True

    def _submit_trial(self, number: int, values: dict[str, Any]) -> bool:
        """The trial's jobs, one per seed; True when its values make no valid job (told failed)."""
        from optuna.trial import TrialState

        try:
            specs = [
                trial_spec(self.spec.base, values, seed_index=index, name=f"{self.spec.name[:160]}-t{number}-s{index}")
                for index in range(self.spec.seeds)
            ]
        except ValidationError as exc:  # the space was checked at creation; a sampled value can still fail
            log.warning("study %s trial %s: %s", self.study_id, number, describe_validation_error(exc)[0])
            self.optuna.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            return True
        for job_spec in specs:
            self._insert(job_spec, trial_number=number)
        return False

    def _insert(self, job_spec: JobSpec, *, trial_number: int | None) -> None:
        job_id, _ = insert_job(
            self.session,
            owner_id=self.owner_id,
            spec=job_spec,
            max_attempts=self.max_attempts,
            study_id=self.study_id,
            trial_number=trial_number,
        )
        assert job_id is not None  # no idempotency key: nothing to conflict with
        self.created.append(job_id)

    def _finish(self) -> None:
        """All trials done: start the finalists, or once they ended, record the study's result."""
        from optuna.trial import TrialState

        complete = self.optuna.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            counts = search.state_counts(self.optuna)
            self._end(StudyStatus.FAILED, f"no trial completed ({counts})", None)
            return
        best = self.optuna.best_trial
        values = search.trial_values(self.spec, best)
        finalists = self.jobs.get(None, [])
        if not finalists:
            try:
                self._submit_finalists(best.number, values)
            except ValidationError as exc:  # not expected (the trial's spec was valid): end, never loop
                self._end(StudyStatus.FAILED, "the winner's finalist spec: " + describe_validation_error(exc)[0], None)
            return
        if not all(job.status.terminal for job in finalists):
            return
        broken = [job for job in finalists if job.status != JobStatus.SUCCEEDED]
        if broken:
            reason = f"finalist job {broken[0].id} {broken[0].status.value}: {broken[0].status_reason}"
            self._end(StudyStatus.FAILED, reason, None)
            return
        try:
            result = study_result(
                self.spec,
                winner=best.number,
                validation=search.complete_value(best),
                values=values,
                finalists=[(job.id, job.result) for job in finalists],
                trials=search.state_counts(self.optuna),
            )
        except (KeyError, TypeError) as exc:  # a finalist's result without the metric: end, never loop
            self._end(StudyStatus.FAILED, f"a finalist's result lacks {exc}", None)
            return
        self._end(StudyStatus.SUCCEEDED, f"trial {best.number} won; {len(finalists)} finalist(s) trained", result)

    def _submit_finalists(self, number: int, values: dict[str, Any]) -> None:
        method = values.get("method.name", self.spec.base.method.name)
        reference = self.spec.reference if method != "student_only" else None  # itself: no gain to measure
        for index in range(self.spec.seeds):
            name = f"{self.spec.name[:160]}-final-s{index}"
            job_spec = trial_spec(self.spec.base, values, seed_index=index, name=name, reference=reference)
            self._insert(job_spec, trial_number=None)
        self.session.execute(
            update(Study)
            .where(Study.id == self.study_id)
            .values(status_reason=f"training the winner, trial {number}, on {self.spec.seeds} seed(s)")
            .execution_options(synchronize_session=False)
        )

    def _end(self, status: StudyStatus, reason: str, result: dict[str, Any] | None) -> None:
        self.session.execute(
            update(Study)
            .where(Study.id == self.study_id)
            .values(status=status, status_reason=reason, result=result, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def _jobs_by_trial(session: Session, study_id: int) -> dict[int | None, list[Row[Any]]]:
    rows = session.execute(
        select(Job.id, Job.trial_number, Job.status, Job.status_reason, Job.result, Job.seed)
        .where(Job.study_id == study_id)
        .order_by(Job.id)
    ).all()
    grouped: dict[int | None, list[Row[Any]]] = defaultdict(list)
    for row in rows:
        grouped[row.trial_number].append(row)
    return grouped


def _storage(database_url: str) -> Any:
    return search.open_storage(study_storage_url(database_url))


def cancel_quietly(session: Session, *, job_id: int, reason: str) -> JobStatus:
    """Cancel one job of a study (queued: at once; running: ``cancelling``); a finished one is left.
    Returns the job's status now."""
    if transition(session, job_id=job_id, to=JobStatus.CANCELLED, expect={JobStatus.QUEUED}, reason=reason):
        return JobStatus.CANCELLED
    if transition(session, job_id=job_id, to=JobStatus.CANCELLING, expect={JobStatus.RUNNING}, reason=reason):
        return JobStatus.CANCELLING
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    assert status is not None  # a study's jobs go only with the study
    return status


def cancel_study(session: Session, *, study: Study, database_url: str) -> Study:
    """Cancel a running study: no more trials are asked, its unfinished jobs are cancelled (running ones
    stop at their next step), and Optuna's running trials are failed. A finished study is a conflict."""
    moved = session.execute(
        update(Study)
        .where(Study.id == study.id, Study.status == StudyStatus.RUNNING)
        .values(status=StudyStatus.CANCELLED, status_reason="cancelled by the owner", finished_at=utcnow())
        .returning(Study.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if moved is None:
        session.rollback()
        current = session.get(Study, study.id, populate_existing=True)
        session.commit()
        assert current is not None
        raise ConflictError(f"study {study.id} already {current.status}; nothing to cancel")
    for job_id in session.scalars(
        select(Job.id).where(Job.study_id == study.id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
    ).all():
        cancel_quietly(session, job_id=job_id, reason=f"study {study.id} cancelled by the owner")
    session.commit()
    _fail_running_trials(stored_spec(study.spec), study.optuna_name, database_url)
    current = session.get(Study, study.id, populate_existing=True)
    session.commit()
    assert current is not None
    return current


def _fail_running_trials(spec: StudySpec, optuna_name: str, database_url: str) -> None:
    """Tell Optuna the cancelled study's running trials failed (tidiness: nothing asks again)."""
    from optuna.trial import TrialState

    try:
        optuna_study = search.find_study(spec, name=optuna_name, storage=_storage(database_url))
        if optuna_study is None:  # cancelled before its first advance
            return
        for trial in optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            optuna_study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    except Exception:  # the study is cancelled in the database already; Optuna's bookkeeping can wait
        log.exception("cancelled study: failing its Optuna trials")


def advance_running(
    sessions: sessionmaker[Session], enqueue: Callable[[int], None], *, database_url: str, max_attempts: int
) -> list[int]:
    """The reaper's pass over studies: advance every running one, each in its own transaction; returns
    the studies that got new jobs. One study's error is logged and does not stop the others."""
    with sessions() as session:
        study_ids = list(session.scalars(select(Study.id).where(Study.status == StudyStatus.RUNNING)))
    moved = []
    for study_id in study_ids:
        with sessions() as session:
            try:
                created = advance_and_publish(
                    session, study_id=study_id, database_url=database_url, max_attempts=max_attempts, enqueue=enqueue
                )
            except Exception:
                log.exception("reaper: advancing study %s failed", study_id)
                continue
        if created:
            moved.append(study_id)
    return moved
