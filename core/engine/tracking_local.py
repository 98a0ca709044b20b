"""Trackers for local runs: the metrics.jsonl record, a rich progress bar, and a fan-out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from core.metrics import Point, from_jsonl, to_jsonl, train_points, validation_points
from core.tracking import Tracker


class MetricsFileTracker:
    """A local run's record of its metric points: ``metrics.jsonl``, written through ``core.metrics``.

    Points are appended as they come, so a run that crashes keeps what it wrote; a run resumed from
    a checkpoint first drops the points written after that checkpoint's step (it trains them again),
    so the file holds each step once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def on_start(self, *, total_epochs: int, steps_per_epoch: int, start_step: int) -> None:
        """Keep the points up to ``start_step`` (none for a fresh run) and open the file for appending."""
        earlier = from_jsonl(self.path.read_text()) if start_step and self.path.exists() else []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(to_jsonl(point for point in earlier if point.step <= start_step))
        self._file = self.path.open("a")

    def _append(self, points: list[Point]) -> None:
        assert self._file is not None, "on_start opens the file"
        self._file.write(to_jsonl(points))

    def on_step(self, *, epoch: int, step: int, losses: Mapping[str, float]) -> None:
        """The step's loss terms."""
        self._append(train_points(step=step, epoch=epoch, losses=losses))

    def on_epoch(
        self, *, epoch: int, step: int, metrics: Mapping[str, float], student_epoch: int | None = None
    ) -> None:
        """Validation metrics; flushed so a reader sees whole epochs."""
        self._append(validation_points(step=step, epoch=epoch, metrics=metrics))
        self.flush()

    def on_checkpoint(self, *, epoch: int, step: int, key: str) -> None:
        """Flush: a resume from this checkpoint finds every point up to its step."""
        self.flush()

    def on_warning(self, *, kind: str, message: str, data: Mapping[str, Any]) -> None:
        """Nothing to write: metrics.jsonl holds metric points; summary.json lists the warnings."""

    def busy(self, what: str) -> AbstractContextManager[None]:
        """Nothing to record."""
        return nullcontext()

    def should_stop(self) -> bool:
        """A file never asks to stop."""
        return False

    def on_finish(self, *, summary: Mapping[str, Any]) -> None:
        """Close the file."""
        self.close()

    def close(self) -> None:
        """Close the file if open; a run that failed keeps the points it wrote."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def flush(self) -> None:
        """Write what is buffered."""
        if self._file is not None:
            self._file.flush()


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

    def on_epoch(
        self, *, epoch: int, step: int, metrics: Mapping[str, float], student_epoch: int | None = None
    ) -> None:
        """Show the validation metric of each network."""
        shown = " ".join(
            f"{key.split('/')[0][0].upper()}:{value:.3f}"
            for key, value in metrics.items()
            if key.endswith(f"/{self.metric}")
        )
        self.progress.update(self.task_id, val=f"val {self.metric} {shown}")

    def on_checkpoint(self, *, epoch: int, step: int, key: str) -> None:
        """Nothing to show."""

    def on_warning(self, *, kind: str, message: str, data: Mapping[str, Any]) -> None:
        """Print the warning's one line above the bar."""
        self.progress.console.print(f"[yellow]warning[/yellow] {escape(message)}", highlight=False, soft_wrap=True)

    def busy(self, what: str) -> AbstractContextManager[None]:
        """Nothing to show."""
        return nullcontext()

    def should_stop(self) -> bool:
        """Ctrl-C is the local way to stop."""
        return False

    def on_finish(self, *, summary: Mapping[str, Any]) -> None:
        """Close the bar."""
        self.close()

    def close(self) -> None:
        """Stop the live bar (idempotent), so an error line after a failed run is not drawn over."""
        self.progress.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


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

    def on_epoch(
        self, *, epoch: int, step: int, metrics: Mapping[str, float], student_epoch: int | None = None
    ) -> None:
        """Forward."""
        for tracker in self.trackers:
            tracker.on_epoch(epoch=epoch, step=step, metrics=metrics, student_epoch=student_epoch)

    def on_checkpoint(self, *, epoch: int, step: int, key: str) -> None:
        """Forward."""
        for tracker in self.trackers:
            tracker.on_checkpoint(epoch=epoch, step=step, key=key)

    def on_warning(self, *, kind: str, message: str, data: Mapping[str, Any]) -> None:
        """Forward."""
        for tracker in self.trackers:
            tracker.on_warning(kind=kind, message=message, data=data)

    @contextmanager
    def busy(self, what: str) -> Iterator[None]:
        """Every tracker's, entered in order."""
        with ExitStack() as stack:
            for tracker in self.trackers:
                stack.enter_context(tracker.busy(what))
            yield

    def should_stop(self) -> bool:
        """True when any tracker asks."""
        return any(tracker.should_stop() for tracker in self.trackers)

    def on_finish(self, *, summary: Mapping[str, Any]) -> None:
        """Forward."""
        for tracker in self.trackers:
            tracker.on_finish(summary=summary)
