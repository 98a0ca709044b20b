"""Errors a person can act on. Each says what went wrong and where; none needs a traceback."""

from __future__ import annotations


def one_line(message: str) -> str:
    """``message`` with its line breaks and runs of spaces folded, so an error stays one line."""
    return " ".join(message.split())


class MmkdError(Exception):
    """Base of every error mmkd raises on purpose. ``retryable`` tells a worker whether to retry."""

    retryable = False
    kind = "error"


class DataError(MmkdError):
    """The data is unusable: names the file and the array or field that is wrong."""

    kind = "invalid_data"

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source


class SpecError(MmkdError):
    """The job spec is unusable (bad YAML, a duplicate key, a wrong type): names the file or field."""

    kind = "invalid_spec"

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source


class NonFiniteLossError(MmkdError):
    """A loss term became NaN or infinite; training cannot go on from this state."""

    kind = "non_finite_loss"

    def __init__(self, step: int, terms: dict[str, float]) -> None:
        bad = ", ".join(f"{name}={value}" for name, value in terms.items())
        super().__init__(f"non-finite loss at step {step}: {bad}")
        self.step = step
        self.terms = terms


class TrainingCancelled(MmkdError):
    """The tracker asked the trainer to stop; raised at a step boundary."""

    kind = "cancelled"

    def __init__(self, step: int) -> None:
        super().__init__(f"cancelled at step {step}")
        self.step = step


class StorageError(MmkdError):
    """Artifact storage could not be reached or refused a request after retries."""

    kind = "storage_unreachable"
    retryable = True


class TimedOut(MmkdError):
    """The attempt ran past the spec's ``train.max_minutes``; raised at a step boundary, or recorded
    by the worker's heartbeat when the loop never reached one. Not retried: it would time out again."""

    kind = "timed_out"

    def __init__(self, max_minutes: float, where: str) -> None:
        super().__init__(f"timed out: ran past train.max_minutes={max_minutes:g} {where}")


class Stalled(MmkdError):
    """The training loop showed no progress for longer than the worker's stall limit (a hung step).
    Recorded by the worker's heartbeat; not retried: a deterministic hang would hang again."""

    kind = "stalled"

    def __init__(
        self, idle_seconds: float, limit_seconds: float, where: str, *, setting: str = "MMKD_STALL_SECONDS"
    ) -> None:
        limit = f"{setting}={limit_seconds:g}"
        super().__init__(f"stalled: no training progress for {idle_seconds:.0f} s (limit {limit}) {where}")


class Pruned(MmkdError):
    """A study's pruner stopped this trial's job after an epoch, its validation value behind the other
    trials' (``studies``). Raised by the worker's tracker at the next step boundary; the job ends
    ``pruned``, not failed, and is not retried."""

    kind = "pruned"
