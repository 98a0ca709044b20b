"""Errors a person can act on. Each says what went wrong and where; none needs a traceback."""

from __future__ import annotations


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
