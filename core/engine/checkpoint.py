"""Resumable training state and a local-folder checkpoint store.

A checkpoint carries everything that decides the rest of the run: all networks and method modules,
every optimiser (the discriminator's included), the scheduler, the RNG states (torch, CUDA, numpy,
python), the position in the data order (epoch, batches done in it, global step), and the epoch
selected so far with its weights (``core.engine.selection``; under ``train.select: last`` it holds
none), and the run-health detector's state (``core.engine.health``: what it has seen and which
warnings it gave). Resuming from it on the same hardware gives the same weights, the same selection
and the same warnings as an uninterrupted run.
"""

from __future__ import annotations

import io
import random
import re
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from core.files import atomic_write

FORMAT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    """Every random number generator the training loop may draw from."""
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    kind, keys, position, has_gauss, cached = legacy
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put the generators back exactly as ``capture_rng`` found them."""
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_bytes(state: dict[str, Any]) -> bytes:
    """Serialise a checkpoint dict with torch.save."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **state}, buffer)
    return buffer.getvalue()


def from_bytes(payload: bytes) -> dict[str, Any]:
    """Read a checkpoint written by ``to_bytes``: tensors and plain values only, never arbitrary pickles."""
    state: dict[str, Any] = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"checkpoint format {state.get('format')!r}, expected {FORMAT_VERSION}")
    return state


class LocalCheckpointStore:
    """Checkpoints as ``step-{n}.pt`` files in a folder, the newest ``keep_last`` kept."""

    pattern = re.compile(r"^step-(\d+)\.pt$")

    def __init__(self, folder: Path, keep_last: int = 2) -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last

    def _steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        found = (self.pattern.match(path.name) for path in self.folder.iterdir())
        return sorted(int(match.group(1)) for match in found if match)

    def save(self, step: int, payload: bytes) -> str:
        """Write ``step-{step}.pt`` atomically, then drop the oldest beyond ``keep_last``."""
        path = self.folder / f"step-{step}.pt"
        atomic_write(path, payload)
        for old in self._steps()[: -self.keep_last]:
            (self.folder / f"step-{old}.pt").unlink(missing_ok=True)
        return str(path)

    def latest_step(self) -> int | None:
        """The step of the newest checkpoint, or None; nothing is read."""
        steps = self._steps()
        return steps[-1] if steps else None

    def load_latest(self) -> tuple[int, bytes] | None:
        """The newest checkpoint, or None."""
        steps = self._steps()
        if not steps:
            return None
        return steps[-1], (self.folder / f"step-{steps[-1]}.pt").read_bytes()
