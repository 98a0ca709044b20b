"""Issue 8, item 4: every method at its *default* settings against student_only, in every setting.

    python -m bench.safe_defaults [--processes 2] [--seeds 5] [--datasets mfeat basic_motions]

The accuracy bench tunes each method; a user who names a method and nothing else gets its defaults.
Here each method runs with ``{"name": method}`` only (model and schedule as in the accuracy bench;
the defaults this bench made us change also run as they were, ``OLD_DEFAULTS``),
with the same seeds as student_only at its default dropout, on every built-in dataset and label
setting. The rule checked: no default falls more than one spread (student_only's standard deviation
over the seeds) below student_only's mean, and the paired gain on the same seeds is reported with a
95% t-interval. Where a default breaks the rule, the table says in how many of its runs the
``student_regressed`` warning fired (the run's own detection of distillation hurting). Runs are
cached with the accuracy bench's (bench/out/runs/, by spec hash).
Writes bench/results/safe_defaults.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
from pathlib import Path
from typing import Any

from bench.accuracy import DATASETS, SETTINGS, bench_spec, run_one
from bench.report_accuracy import fmt_gain, paired_gain
from core.spec import METHOD_NAMES

RESULTS = Path("bench/results/safe_defaults.json")
#: teacher_only trains no student of its own (its student is student_only's).
METHODS = tuple(name for name in METHOD_NAMES if name != "teacher_only")
#: The defaults this bench made us change, as they were: each is also run, so the table shows both. Spelled
#: out, they validate to the spec the old default gave, so their runs have the same hash as before.
OLD_DEFAULTS: dict[str, dict[str, Any]] = {
    "mi_joint": {"alpha": 0.5},
    "feature_kd": {"feature_weight": 1.0},
    "crd": {"alpha": 1.0},
    "mfh_kd": {"keep_ratio": 0.25},
}
#: Row label -> method block.
ROWS: dict[str, dict[str, Any]] = {
    **{name: {"name": name} for name in METHODS},
    **{f"{name} (old default)": {"name": name, **old} for name, old in OLD_DEFAULTS.items()},
}


def spec(dataset: str, setting: str, row: str, seed: int) -> dict[str, Any]:
    """One run's spec: the row's method block, the accuracy bench's model and schedule."""
    method = ROWS[row]
    return bench_spec(f"defaults-{dataset}-{method['name']}", dataset, setting, method, seed)


def verdict(student_only: list[dict[str, Any]], method: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, spread, paired gain and whether the method's default keeps the rule (runs are
    ``{"seed", "student": {"accuracy"}}``)."""
    reference = [run["student"]["accuracy"] for run in student_only]
    values = [run["student"]["accuracy"] for run in method]
    mean = statistics.mean(values)
    return {
        "accuracy": values,
        "mean": mean,
        "std": statistics.stdev(values),
        "gain": paired_gain(method, student_only),
        "safe": mean >= statistics.mean(reference) - statistics.stdev(reference),
        "warned": sum(run["warned"] for run in method),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seeds", type=int, default=5, help="Seeds per row, at least 2 (the rule needs a spread).")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds: at least 2; the rule compares with student_only's spread over the seeds")
    cells = [(dataset, setting) for dataset in args.datasets for setting in SETTINGS]
    keys = [(d, s, row, seed) for d, s in cells for row in ROWS for seed in range(args.seeds)]
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        summaries = pool.map(run_one, [spec(*key) for key in keys], chunksize=1)
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for (dataset, setting, row, seed), summary in zip(keys, summaries, strict=True):
        warned = any(w["kind"] == "student_regressed" for w in summary.get("warnings", []))
        runs.setdefault((dataset, setting, row), []).append(
            {"seed": seed, "student": summary["student"], "warned": warned}
        )
    results: dict[str, Any] = {}
    for dataset, setting in cells:
        reference = runs[(dataset, setting, "student_only")]
        results[f"{dataset}|{setting}"] = {row: verdict(reference, runs[(dataset, setting, row)]) for row in ROWS}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"seeds": args.seeds, "cells": results}, indent=1))
    print(report(results))


def report(results: dict[str, Any]) -> str:
    """The markdown table: one row per method, one column per setting."""
    cells = list(results)
    lines = [
        "| method | " + " | ".join(cell.replace("|", " ") for cell in cells) + " |",
        "|---|" + "---|" * len(cells),
    ]
    for label in ROWS:
        row = []
        for cell in cells:
            entry = results[cell][label]
            if label == "student_only":
                row.append(f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}")
                continue
            mark = "" if entry["safe"] else f" **unsafe** (warned in {entry['warned']} of {len(entry['accuracy'])})"
            row.append(f"{100 * entry['mean']:.1f}, {fmt_gain(tuple(entry['gain']))}{mark}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
