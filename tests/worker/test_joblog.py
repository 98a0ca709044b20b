"""Job logs on the worker side: the capture's bounds, the database tail, the stored per-attempt log,
and a real run through ``worker.runner.run_job`` that leaves both."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from worker_helpers import TINY, submit

from jobs.log_lines import LogLine, append_lines, trim_tail
from jobs.models import Artifact, JobLogLine
from jobs.orm import utcnow
from worker import runner
from worker.config import get_worker_settings
from worker.joblog import MAX_LINE_CHARS, JobLog

log = logging.getLogger("core.engine.test_joblog")


def _lines(sessions: sessionmaker[Session], job_id: int) -> list[JobLogLine]:
    with sessions() as session:
        return list(session.scalars(select(JobLogLine).where(JobLogLine.job_id == job_id).order_by(JobLogLine.id)))


def _capture(sessions: sessionmaker[Session], job_id: int, tmp_path: Path, **bounds: int) -> JobLog:
    values = {"tail_lines": 100, "max_bytes": 1_000_000, **bounds}
    return JobLog(sessions, job_id=job_id, attempt=2, path=tmp_path / "attempt.log", flush_seconds=60, **values)


def test_append_and_trim_keep_the_newest_lines(sessions: sessionmaker[Session], make_job: Callable[..., int]) -> None:
    job_id, other = make_job(), make_job()
    with sessions() as session:
        for target in (job_id, other):
            lines = [LogLine(utcnow(), "INFO", "core", f"line {i}") for i in range(10)]
            append_lines(session, job_id=target, attempt=1, lines=lines)
        assert trim_tail(session, job_id=job_id, keep=3) == 7
        assert trim_tail(session, job_id=job_id, keep=3) == 0
        session.commit()
    assert [line.message for line in _lines(sessions, job_id)] == ["line 7", "line 8", "line 9"]
    assert len(_lines(sessions, other)) == 10  # another job's tail is untouched


def test_capture_writes_lines_warnings_and_restores_logging(
    sessions: sessionmaker[Session], make_job: Callable[..., int], tmp_path: Path
) -> None:
    job_id = make_job()
    root = logging.getLogger()
    handlers, core_level = list(root.handlers), logging.getLogger("core").level
    with _capture(sessions, job_id, tmp_path) as job_log:
        log.info("epoch %d of %d", 1, 3)
        warnings.warn("a user warning", UserWarning, stacklevel=1)
        log.debug("not kept")
        log.info("x" * (MAX_LINE_CHARS + 50))
    assert root.handlers == handlers and logging.getLogger("core").level == core_level
    assert logging.getLogger("py.warnings").handlers == [] or job_log not in logging.getLogger("py.warnings").handlers
    rows = _lines(sessions, job_id)
    assert [(r.level, r.attempt) for r in rows][:2] == [("INFO", 2), ("WARNING", 2)]
    assert rows[0].message == "epoch 1 of 3" and rows[0].logger == "core.engine.test_joblog"
    assert "a user warning" in rows[1].message
    assert rows[2].message.endswith("[... 50 characters cut]") and len(rows) == 3
    text = job_log.path.read_text()
    assert "epoch 1 of 3" in text and "a user warning" in text and "not kept" not in text
    log.info("after the capture")
    assert len(_lines(sessions, job_id)) == 3


def test_buffer_and_file_caps_say_what_they_dropped(
    sessions: sessionmaker[Session], make_job: Callable[..., int], tmp_path: Path
) -> None:
    job_id = make_job()
    job_log = _capture(sessions, job_id, tmp_path, max_bytes=2_000)
    job_log._max_buffered = 5
    with job_log:
        for i in range(40):
            log.info("line %03d %s", i, "y" * 40)
    rows = _lines(sessions, job_id)
    assert [r.message[:8] for r in rows[:5]] == [f"line {i:03d}" for i in range(5)]
    assert rows[-1].message.startswith("[35 log lines dropped") and len(rows) == 6
    text = job_log.path.read_text()
    assert text.endswith("[log truncated: the attempt's log reached MMKD_MAX_LOG_BYTES=2000]\n")
    assert len(text.encode()) < 2_200 and "line 000" in text


def test_a_failed_flush_keeps_the_lines_for_the_next(
    sessions: sessionmaker[Session], make_job: Callable[..., int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = make_job()
    job_log = _capture(sessions, job_id, tmp_path)
    with job_log:
        log.info("kept through a failure")
        real = job_log.sessions
        monkeypatch.setattr(job_log, "sessions", lambda: (_ for _ in ()).throw(OSError("database down")))
        assert job_log.flush_to_database() is False  # no exception reaches the caller
        job_log.sessions = real
    assert [r.message for r in _lines(sessions, job_id)] == ["kept through a failure"]


def test_a_run_leaves_its_tail_and_stores_the_whole_log(
    embedded: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMKD_LOG_TAIL_LINES", "10")
    get_worker_settings.cache_clear()
    job_id = submit(embedded, {**TINY, "train": {**TINY["train"], "epochs": 12}})
    assert runner.run_job(job_id) == "succeeded"
    rows = _lines(embedded, job_id)
    assert len(rows) == 10 and {r.attempt for r in rows} == {1}
    assert rows[-1].message.startswith("finished: epoch")
    with embedded() as session:
        artifact = session.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == "log")).one()
        total = session.scalar(select(func.count()).select_from(JobLogLine))
    assert artifact.key == f"jobs/{job_id}/logs/attempt-1.log" and total == 10
    text = (tmp_path / "artifacts" / artifact.key).read_text()
    assert "paper on basic_motions" in text and text.count("validation") >= 12
    assert all(row.message in text for row in rows)
    assert not list((tmp_path / "work").glob("*.log"))  # the local copy is gone


def test_a_failed_attempt_lists_its_log_when_it_reads_failed(embedded: sessionmaker[Session]) -> None:
    diverging = {**TINY, "train": {**TINY["train"], "lr": 10.0, "optimizer": "sgd", "grad_clip": None, "seed": 3}}
    job_id = submit(embedded, diverging)
    assert runner.run_job(job_id) == "failed"
    with embedded() as session:
        kinds = list(session.scalars(select(Artifact.kind).where(Artifact.job_id == job_id)))
    assert kinds == ["log"]  # the only artifact of a failed job, recorded before the failure
