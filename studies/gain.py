"""A study's gain over training alone when its winner trained on several seeds: each seed's finalist
carries its own paired gain (``result.gain``, the student against the reference of the same seed);
over seeds the gain is their mean, with a 95% percentile interval from resampling the seeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def gain_over_seeds(gains: Sequence[dict[str, Any]], *, resamples: int, seed: int = 0) -> dict[str, Any]:
    """Combine per-seed gains (``Gain`` dicts of one metric) into the gain over seeds: mean student,
    mean reference, mean paired difference, and its interval over ``resamples`` bootstrap draws of
    the seeds (seeded, so the same finalists give the same interval). One seed is returned as it is:
    its interval is already the one over test samples."""
    if len(gains) == 1:
        return {**gains[0], "over": "test_samples"}
    differences = np.array([gain["value"] for gain in gains], dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = differences[rng.integers(0, len(differences), size=(resamples, len(differences)))].mean(axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    first = gains[0]
    return {
        "reference_method": first["reference_method"],
        "metric": first["metric"],
        "student": float(np.mean([gain["student"] for gain in gains])),
        "reference": float(np.mean([gain["reference"] for gain in gains])),
        "value": float(differences.mean()),
        "low": float(low),
        "high": float(high),
        "resamples": resamples,
        "test_samples": first["test_samples"],
        "over": "seeds",
        "seeds": len(gains),
    }
