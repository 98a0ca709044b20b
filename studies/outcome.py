"""What a study's jobs amount to, the same on the service and in ``mmkd tune``: a trial's objective
from its job's result, and the study's result from its winner and the winner's finalists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.errors import MmkdError
from studies.gain import gain_over_seeds
from studies.spec import StudySpec


def trial_objective(result: Mapping[str, Any] | None, metric: str) -> float:
    """A finished trial job's objective: the student's validation metric at its selected epoch."""
    if not result or metric not in result.get("validation", {}).get("student", {}):
        raise MmkdError(f"a finished trial job has no validation {metric}")
    return float(result["validation"]["student"][metric])


def study_result(
    spec: StudySpec,
    *,
    winner: int,
    validation: float,
    values: dict[str, Any],
    finalists: Sequence[tuple[int | None, Mapping[str, Any]]],
    trials: dict[str, int],
) -> dict[str, Any]:
    """The study's result: the winning trial, its finalists' mean test metric and the gain over training
    alone (over test samples for one seed, over seeds for several; None without a reference).
    ``finalists`` are ``(job id or None locally, result)`` in seed order."""
    metric = spec.metric
    tests = [result["student"][metric] for _, result in finalists]
    gains = [result["gain"] for _, result in finalists if result.get("gain")]
    resamples = spec.reference.resamples if spec.reference else 0
    return {
        "winner": {"trial": winner, "values": values, "validation": validation},
        "metric": metric,
        "direction": spec.direction,
        "student_job_id": finalists[0][0],
        "finalist_job_ids": [job_id for job_id, _ in finalists],
        "test": sum(tests) / len(tests),
        "gain": gain_over_seeds(gains, resamples=resamples) if gains and len(gains) == len(finalists) else None,
        "trials": trials,
    }
