"""The student recipe on mfeat with full labels: student_only under a few train settings, and the
logistic-regression reference on the same primary views and the same split.

    python -m bench.student_recipe [--processes 2] [--seeds 3]

The spec is ``examples/mfeat-paper.yaml`` with method ``student_only`` (its primary views fou, zer,
mor, its model and schedule); each setting changes only ``train`` fields. The reference is
scikit-learn's ``LogisticRegression`` on the concatenated primary views of the prepared split,
standardised on train, C chosen on validation. Runs are cached by spec hash like ``bench.accuracy``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from bench.accuracy import run_one
from core.spec import JobSpec, load_spec

EXAMPLE = Path("examples/mfeat-paper.yaml")
REFERENCE_CS = (0.01, 0.1, 1.0, 10.0, 100.0)

BEFORE = "as before (wd 1e-4, ls 0, last)"
SETTINGS: dict[str, dict[str, Any]] = {
    BEFORE: {},
    "ls 0.1": {"label_smoothing": 0.1},
    "best_val": {"select": "best_val"},
    "best_val, ls 0.1": {"select": "best_val", "label_smoothing": 0.1},
    "best_val, ls 0.1, wd 5e-4": {"select": "best_val", "label_smoothing": 0.1, "weight_decay": 5e-4},
    "best_val, ls 0.1, wd 5e-2": {"select": "best_val", "label_smoothing": 0.1, "weight_decay": 5e-2},
    "ls 0.1, wd 5e-2": {"label_smoothing": 0.1, "weight_decay": 5e-2},
}


def recipe_spec(train: dict[str, Any], seed: int) -> dict[str, Any]:
    """The example's spec as student_only with ``train`` fields overridden; no checkpoints."""
    spec = load_spec(EXAMPLE).model_dump(mode="json")
    spec["name"] = "bench-student-recipe"
    spec["method"] = {"name": "student_only"}
    spec["train"] = {**spec["train"], **train, "seed": seed}
    spec["checkpoint"] = {"every_epochs": None}
    return spec


def reference_accuracy() -> tuple[float, float]:
    """Logistic regression on the example's primary views: (test accuracy, the C chosen on validation)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from core.data.prepare import prepare

    spec = JobSpec.model_validate(recipe_spec({}, 0))
    data = prepare(spec.dataset, spec.task)

    def features(part: Any) -> np.ndarray:
        return np.concatenate([part.modalities[name].reshape(len(part.label), -1) for name in spec.dataset.primary], 1)

    scaler = StandardScaler().fit(features(data.train))
    train, val, test = (scaler.transform(features(part)) for part in (data.train, data.val, data.test))
    fitted = {c: LogisticRegression(C=c, max_iter=5000).fit(train, data.train.label) for c in REFERENCE_CS}
    best_c = max(REFERENCE_CS, key=lambda c: (fitted[c].score(val, data.val.label), -c))
    return float(fitted[best_c].score(test, data.test.label)), best_c


def spread(values: list[float]) -> str:
    """Mean ± std in percent."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def main() -> None:
    """Train every setting on every seed, then print the table in Markdown."""
    parser = argparse.ArgumentParser(description="student_only on mfeat under a few train settings.")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    jobs = [(label, seed) for label in SETTINGS for seed in range(args.seeds)]
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        summaries = pool.map(run_one, [recipe_spec(SETTINGS[label], seed) for label, seed in jobs])
    by_setting: dict[str, list[dict[str, Any]]] = {label: [] for label in SETTINGS}
    for (label, _), summary in zip(jobs, summaries, strict=True):
        by_setting[label].append(summary)
    accuracy, c = reference_accuracy()
    print(f"seeds 0-{args.seeds - 1}; test and validation accuracy (%) of the student, mean ± std\n")
    print("| setting | student test | paired gain on test | student val | selected epochs |")
    print("|---|---|---|---|---|")
    before = [run["student"]["accuracy"] for run in by_setting[BEFORE]]
    for label, runs in by_setting.items():
        test = [run["student"]["accuracy"] for run in runs]
        gain = spread([new - old for new, old in zip(test, before, strict=True)])
        val = spread([run["validation"]["student"]["accuracy"] for run in runs])
        epochs = ", ".join(str(run.get("selected_epoch", "-")) for run in runs)
        print(f"| {label} | {spread(test)} | {gain} | {val} | {epochs} |")
    print(f"| logistic regression, primary views (C = {c:g} on val) | {100 * accuracy:.1f} | | | |")


if __name__ == "__main__":
    main()
