"""One job attempt's log: what the attempt logs (its own logging and Python warnings) while it runs
in this worker process, kept as a recent tail in the database and, when the attempt reaches its
outcome, as a whole file among the job's artifacts (``jobs/{id}/logs/attempt-{n}.log``, kind
``log``), recorded before the outcome so a finished job already lists it.

Bounded everywhere: a line is cut at ``MAX_LINE_CHARS``; lines wait for the database in a buffer of
at most ``max_buffered`` (beyond it they are counted, and one line says how many were dropped);
the file stops at ``max_bytes`` with one line saying so. A failed database write never reaches
training: the lines stay buffered and the next flush tries again."""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path
from types import TracebackType

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from jobs.lifecycle import record_artifact
from jobs.log_lines import LogLine, append_lines, trim_tail
from jobs.orm import utcnow
from storage.objects import StoredObject
from storage.store import ArtifactStore

log = logging.getLogger(__name__)
#: Longer messages are cut here (a marker says how much went).
MAX_LINE_CHARS = 4096
#: Loggers whose INFO lines a job's log should hold even when the worker logs at WARNING.
JOB_LOGGERS = ("core", "worker", "jobs", "storage")


class JobLog(logging.Handler):
    """Capture the records of one attempt, from ``__enter__`` to ``__exit__``, on the root logger."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        job_id: int,
        attempt: int,
        path: Path,
        flush_seconds: float,
        tail_lines: int,
        max_bytes: int,
        max_buffered: int = 10_000,
    ) -> None:
        super().__init__(level=logging.INFO)
        self.sessions, self.job_id, self.attempt, self.path = sessions, job_id, attempt, path
        self.flush_seconds, self.tail_lines, self.max_bytes = flush_seconds, tail_lines, max_bytes
        self._buffer: deque[LogLine] = deque()
        self._max_buffered = max_buffered
        self._dropped = 0
        self._file_bytes = 0
        self._file_full = False
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name=f"job-{job_id}-log", daemon=True)
        self._saved_levels: dict[str, int] = {}
        self.setFormatter(logging.Formatter())

    def __enter__(self) -> JobLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8", errors="replace")
        for name in JOB_LOGGERS:
            logger = logging.getLogger(name)
            self._saved_levels[name] = logger.level
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
        logging.captureWarnings(True)
        logging.getLogger().addHandler(self)
        self._flusher.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        logging.getLogger().removeHandler(self)
        logging.captureWarnings(False)
        for name, level in self._saved_levels.items():
            logging.getLogger(name).setLevel(level)
        self._stop.set()
        self._flusher.join()
        self.flush_to_database()
        self._file.close()

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record: a line for the file and the database buffer. Never raises."""
        if record.name == __name__:  # the capture's own complaints would feed themselves
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + self.formatter.formatException(record.exc_info)  # type: ignore[union-attr]
            if len(message) > MAX_LINE_CHARS:
                message = f"{message[:MAX_LINE_CHARS]} [... {len(message) - MAX_LINE_CHARS} characters cut]"
            line = LogLine(at=utcnow(), level=record.levelname, logger=record.name[:128], message=message)
            with self._guard:
                self._write_file(line)
                if len(self._buffer) < self._max_buffered:
                    self._buffer.append(line)
                else:
                    self._dropped += 1
        except Exception:
            self.handleError(record)

    def _write_file(self, line: LogLine) -> None:
        if self._file_full:
            return
        text = f"{line.at.isoformat(timespec='milliseconds')} {line.level} {line.logger}: {line.message}\n"
        size = len(text.encode("utf-8", errors="replace"))
        if self._file_bytes + size > self.max_bytes:
            self._file.write(f"[log truncated: the attempt's log reached MMKD_MAX_LOG_BYTES={self.max_bytes}]\n")
            self._file_full = True
        else:
            self._file.write(text)
            self._file_bytes += size
        self._file.flush()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush_to_database()

    def flush_to_database(self) -> bool:
        """Write the buffered lines and trim the job's tail; on a database error keep them for next time."""
        with self._guard:
            lines = list(self._buffer)
            dropped = self._dropped
        if dropped:
            note = f"[{dropped} log lines dropped: more than {self._max_buffered} waited for the database]"
            lines.append(LogLine(at=utcnow(), level="WARNING", logger=__name__, message=note))
        if not lines:
            return True
        try:
            with self.sessions() as session:
                append_lines(session, job_id=self.job_id, attempt=self.attempt, lines=lines)
                trim_tail(session, job_id=self.job_id, keep=self.tail_lines)
                session.commit()
        except Exception as error:  # training goes on; the lines wait for the next flush
            log.warning("job %s: writing %d log lines failed (%s); retrying", self.job_id, len(lines), error)
            return False
        with self._guard:
            for _ in range(len(lines) - (1 if dropped else 0)):
                self._buffer.popleft()
            self._dropped -= dropped
        return True

    def upload(self, store: ArtifactStore) -> StoredObject | None:
        """The log so far, uploaded as ``jobs/{id}/logs/attempt-{n}.log``; None if storage failed
        (the tail in the database is all there is then)."""
        try:
            return store.put_file(f"jobs/{self.job_id}/logs/attempt-{self.attempt}.log", self.path)
        except Exception:
            log.exception("job %s attempt %s: storing the log failed", self.job_id, self.attempt)
            return None

    def store(self, store: ArtifactStore) -> None:
        """Upload the log and record it as a ``log`` artifact in a transaction of its own."""
        stored = self.upload(store)
        if stored is None:
            return
        try:
            with self.sessions() as session:
                record_artifact(
                    session,
                    job_id=self.job_id,
                    key=stored.key,
                    kind="log",
                    size_bytes=stored.size,
                    checksum=f"sha256:{stored.sha256}",
                )
                session.commit()
        except IntegrityError:  # this attempt's log was recorded already
            pass
        except Exception:
            log.exception("job %s attempt %s: recording the log failed", self.job_id, self.attempt)
