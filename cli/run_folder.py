"""The folder of one local run, written so that it is complete or absent.

``mmkd train --out RUN`` trains in the sibling ``RUN.partial`` and renames it to ``RUN`` in one step
at the end. A run that fails or is killed leaves ``RUN.partial`` only when it holds a checkpoint to
resume (``--resume`` continues there); otherwise nothing. A finished ``RUN`` is never touched again.
One process at a time trains there: it holds ``flock`` on ``.RUN.lock`` beside it from its checks to the
rename, and a second ``train`` or ``--resume`` is refused.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cli.common import fail
from core.engine.checkpoint import LocalCheckpointStore


@dataclass(frozen=True)
class RunFolder:
    """``final`` (the user's ``--out``) and ``work``, the ``.partial`` sibling a run trains in."""

    final: Path

    @classmethod
    def at(cls, out: Path) -> RunFolder:
        """The run folder for ``--out``; ``.`` or ``..`` are named by their absolute path."""
        final = out if out.name not in ("", "..") else Path(os.path.abspath(out))
        if not final.name:
            fail(f"{out}: --out must name a folder to create")
        return cls(final)

    @property
    def work(self) -> Path:
        """Where the run trains until it is finished."""
        return self.final.with_name(f"{self.final.name}.partial")

    @property
    def lock_path(self) -> Path:
        """The file whose ``flock`` the process training in ``work`` holds (it holds its pid)."""
        return self.final.with_name(f".{self.final.name}.lock")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock (making the parent folders) or fail naming the pid that holds it."""
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            fd = _acquire(self.lock_path)
        except OSError as exc:
            fail(f"{self.lock_path}: cannot create the run's lock ({exc.strerror})")
        if fd is None:
            holder = _read_pid(self.lock_path)
            fail(f"{self.work}: in use by {f'pid {holder}' if holder else 'another process'}; wait for it to end")
        try:
            yield
        finally:
            self.lock_path.unlink(missing_ok=True)  # before the unlock: a waiter then retries on a new file
            os.close(fd)

    def checkpoints(self, keep_last: int = 2) -> LocalCheckpointStore:
        """The store of the unfinished run's checkpoints."""
        return LocalCheckpointStore(self.work / "checkpoints", keep_last=keep_last)

    def _finished(self) -> bool:
        """True when ``final`` exists and is more than an empty folder (which the rename may replace)."""
        try:
            return self.final.exists() and not (self.final.is_dir() and not any(self.final.iterdir()))
        except OSError as exc:
            fail(f"{self.final}: cannot be read ({exc.strerror})")

    def check(self, *, resume: bool) -> int | None:
        """The step ``--resume`` continues from, or None for a fresh run; an error when neither fits."""
        if resume:
            return self.check_resume()
        self.check_fresh()
        return None

    def check_fresh(self) -> None:
        """Refuse to start over a finished run or beside an unfinished one."""
        if self._finished():
            fail(f"{self.final} already exists; a finished run is never overwritten: choose another --out")
        if self.work.exists():
            fail(f"{self.work} holds an unfinished run; pass --resume to continue it, or delete it")

    def check_resume(self) -> int:
        """The step of the checkpoint ``--resume`` continues from; an error when there is none."""
        if self._finished():
            fail(f"{self.final} already exists (a finished run); there is nothing to resume")
        step = self.checkpoints().latest_step()
        if step is None:
            where = "holds no checkpoint" if self.work.is_dir() else "does not exist"
            fail(f"nothing to resume: {self.work} {where}; start the run without --resume")
        return step

    def create(self) -> None:
        """Make the empty work folder of a fresh run (its parents too)."""
        try:
            self.work.parent.mkdir(parents=True, exist_ok=True)
            self.work.mkdir()
        except FileExistsError:
            fail(f"{self.work} holds an unfinished run; pass --resume to continue it, or delete it")
        except OSError as exc:
            fail(f"{self.work}: cannot create the run folder ({exc.strerror})")

    def abandon(self) -> str | None:
        """After a failure: keep the work folder if it can be resumed (and say so), else remove it."""
        step = self.checkpoints().latest_step()
        if step is None:
            shutil.rmtree(self.work, ignore_errors=True)
            return None
        return f"the unfinished run is kept in {self.work} (checkpoint at step {step}): --resume continues it"

    def finish(self) -> None:
        """Move the finished run into place, in one rename."""
        try:
            self.work.replace(self.final)
        except OSError as exc:
            fail(f"{self.final}: cannot move the finished run there ({exc.strerror}); it is complete in {self.work}")


def _acquire(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive ``flock`` (the pid written in), or None when
    another process holds it. A file unlinked by its last holder between open and lock is opened again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


def _read_pid(path: Path) -> int | None:
    """The pid a lock file holds; None when it cannot be read (its holder may not have written it yet)."""
    try:
        return int(path.read_text()[:20])
    except (OSError, ValueError):
        return None
