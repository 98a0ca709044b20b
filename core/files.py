"""Files written whole or not at all: a temporary file beside the target, renamed into place.

Every local output a person reads (checkpoints, predictions, exported splits) goes through here, so
a crash, a full disk or Ctrl-C never leaves a half-written file under the name they asked for."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def atomic_write(path: Path, payload: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``arrays`` as an .npz archive at exactly ``path`` (``np.savez`` would add ``.npz`` to a bare
    name), atomically."""
    archive = io.BytesIO()
    np.savez(archive, **arrays)  # type: ignore[arg-type]
    atomic_write(path, archive.getvalue())
