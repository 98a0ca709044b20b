"""A ``core.tracking.CheckpointStore`` over an artifact store: ``jobs/{job_id}/checkpoints/step-{n}.pt``."""

from __future__ import annotations

import re

from storage.store import ArtifactStore

_STEP_KEY = re.compile(r"/step-(\d+)\.pt$")


def checkpoint_prefix(job_id: int | str) -> str:
    """The key prefix under which a job's checkpoints live."""
    return f"jobs/{job_id}/checkpoints/"


class StorageCheckpointStore:
    """Saves checkpoints by step and keeps only the newest ``keep_last`` of them."""

    def __init__(self, store: ArtifactStore, job_id: int | str, *, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise ValueError("keep_last must be at least 1")
        self.store = store
        self.prefix = checkpoint_prefix(job_id)
        self.keep_last = keep_last

    def _steps(self) -> dict[int, str]:
        found = {}
        for key in self.store.list_keys(self.prefix):
            match = _STEP_KEY.search(key)
            if match:
                found[int(match.group(1))] = key
        return found

    def save(self, step: int, payload: bytes) -> str:
        """Write the checkpoint (atomically), then prune all but the newest ``keep_last``."""
        key = f"{self.prefix}step-{step}.pt"
        self.store.put_bytes(key, payload)
        steps = self._steps()
        stale = sorted(steps)[: -self.keep_last]
        if stale:
            self.store.delete([steps[s] for s in stale])
        return key

    def load_latest(self) -> tuple[int, bytes] | None:
        """The highest-step checkpoint as ``(step, payload)``, or None."""
        steps = self._steps()
        if not steps:
            return None
        newest = max(steps)
        return newest, self.store.get_bytes(steps[newest])
