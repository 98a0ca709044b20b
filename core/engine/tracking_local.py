"""Trackers for local runs: a metrics.jsonl writer, a rich progress bar, and a fan-out."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from core.tracking import Tracker


class JsonlTracker:
    """Appends one JSON object per event to ``path``: kind, step, epoch, and the values."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("a")

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def on_start(self, *, total_epochs: int, steps_per_epoch: int, start_step: int) -> None:
        """Record the plan (and where a resumed run starts)."""
        self._write(
            {"kind": "start", "total_epochs": total_epochs, "steps_per_epoch": steps_per_epoch, "step": start_step}
        )

    def on_step(self, *, epoch: int, step: int, losses: Mapping[str, float]) -> None:
        """One line per step with every loss term."""
        self._write({"kind": "train", "epoch": epoch, "step": step, **losses})

    def on_epoch(self, *, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        """Validation metrics; flushed so a reader sees whole epochs."""
        self._write({"kind": "val", "epoch": epoch, "step": step, **metrics})
        self._file.flush()

    def on_checkpoint(self, *, epoch: int, step: int, key: str) -> None:
        """Where the checkpoint went."""
        self._write({"kind": "checkpoint", "epoch": epoch, "step": step, "key": key})

    def should_stop(self) -> bool:
        """A file never asks to stop."""
        return False

    def on_finish(self, *, summary: Mapping[str, Any]) -> None:
        """The test metrics, then close the file."""
        self._write({"kind": "test", **{k: summary[k] for k in ("student", "teacher", "auxiliary")}})
        self._file.close()


class RichProgressTracker:
    """A live bar: epoch, step, loss terms, the latest validation metrics, ETA."""

    def __init__(self, primary_metric: str) -> None:
        self.metric = primary_metric
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"),
            TextColumn("[cyan]{task.fields[val]}"),
        )
        self.task_id: Any = None

    def on_start(self, *, total_epochs: int, steps_per_epoch: int, start_step: int) -> None:
        """Open the bar at the resume point."""
        self.progress.start()
        self.task_id = self.progress.add_task(
            "train",
            total=total_epochs * steps_per_epoch,
            completed=start_step,
            epoch=0,
            epochs=total_epochs,
            losses="",
            val="",
        )

    def on_step(self, *, epoch: int, step: int, losses: Mapping[str, float]) -> None:
        """Advance and show the loss terms."""
        shown = " ".join(f"{name}={value:.3f}" for name, value in losses.items())
        self.progress.update(self.task_id, completed=step, epoch=epoch + 1, losses=shown)

    def on_epoch(self, *, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        """Show the validation metric of each network."""
        shown = " ".join(
            f"{key.split('/')[0][0].upper()}:{value:.3f}"
            for key, value in metrics.items()
            if key.endswith(f"/{self.metric}")
        )
        self.progress.update(self.task_id, val=f"val {self.metric} {shown}")

    def on_checkpoint(self, *, epoch: int, step: int, key: str) -> None:
        """Nothing to show."""

    def should_stop(self) -> bool:
        """Ctrl-C is the local way to stop."""
        return False

    def on_finish(self, *, summary: Mapping[str, Any]) -> None:
        """Close the bar."""
        self.progress.stop()


class FanOutTracker:
    """Forwards every event to several trackers; stops when any of them asks to."""

    def __init__(self, *trackers: Tracker) -> None:
        self.trackers = trackers

    def on_start(self, *, total_epochs: int, steps_per_epoch: int, start_step: int) -> None:
        """Forward."""
        for tracker in self.trackers:
            tracker.on_start(total_epochs=total_epochs, steps_per_epoch=steps_per_epoch, start_step=start_step)

    def on_step(self, *, epoch: int, step: int, losses: Mapping[str, float]) -> None:
        """Forward."""
        for tracker in self.trackers:
            tracker.on_step(epoch=epoch, step=step, losses=losses)

    def on_epoch(self, *, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        """Forward."""
        for tracker in self.trackers:
            tracker.on_epoch(epoch=epoch, step=step, metrics=metrics)

    def on_checkpoint(self, *, epoch: int, step: int, key: str) -> None:
        """Forward."""
        for tracker in self.trackers:
            tracker.on_checkpoint(epoch=epoch, step=step, key=key)

    def should_stop(self) -> bool:
        """True when any tracker asks."""
        return any(tracker.should_stop() for tracker in self.trackers)

    def on_finish(self, *, summary: Mapping[str, Any]) -> None:
        """Forward."""
        for tracker in self.trackers:
            tracker.on_finish(summary=summary)
