"""Files and folders written whole or not at all: a temporary one beside the target, renamed into place.

Every local output a person reads (checkpoints, predictions, exported splits, the student export) goes through here, so
a crash, a full disk or Ctrl-C never leaves a half-written file under the name they asked for."""

from __future__ import annotations

import io
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def atomic_write(path: Path, payload: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_beside(path: Path) -> tuple[int, str]:
    """A new, empty hidden file beside ``path``, opened for writing, with the mode the umask gives
    (``mkstemp`` would make it 0600 whatever the umask, and the rename would keep that)."""
    while True:
        tmp = str(path.with_name(f".{path.name}.{secrets.token_hex(6)}"))
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``arrays`` as an .npz archive at exactly ``path`` (``np.savez`` would add ``.npz`` to a bare
    name), atomically."""
    archive = io.BytesIO()
    np.savez(archive, **arrays)  # type: ignore[arg-type]
    atomic_write(path, archive.getvalue())


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; renamed to ``path`` when the block ends (replacing
    an earlier one), removed if it raises: ``path`` is never seen half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    work = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")
    work.mkdir()  # not mkdtemp: the folder keeps the usual permissions
    try:
        yield work
        if path.exists():
            shutil.rmtree(path)
        work.replace(path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
