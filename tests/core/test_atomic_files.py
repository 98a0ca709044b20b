"""core.files: outputs written whole, with the permissions the umask gives (as np.savez's were)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.files import atomic_write, write_npz


@pytest.fixture()
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_outputs_get_the_mode_the_umask_gives(tmp_path: Path, umask_022: None) -> None:
    atomic_write(tmp_path / "checkpoint.pt", b"payload")
    write_npz(tmp_path / "predictions", {"prediction": np.arange(3)})
    for name in ("checkpoint.pt", "predictions"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint.pt", "predictions"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.npz"
    target.write_bytes(b"earlier")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"earlier"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.npz"]
