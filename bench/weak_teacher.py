"""A controlled test of claims 1 and 2: the teacher's accuracy at the *same* distillation weight.

    python -m bench.weak_teacher [--processes 2] [--seeds 5]

The accuracy bench tunes each method separately, so mi_joint and mi_joint_aux may end up with
different alphas. Here alpha is fixed (and beta = alpha, gamma = 0.1 where they exist), swept over
a moderate and a strong value, with the same seeds and splits; the reference is teacher_only.
Writes bench/results/weak_teacher.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
from pathlib import Path
from typing import Any

from bench.accuracy import bench_spec, run_one

RESULTS = Path("bench/results/weak_teacher.json")
ALPHAS = (1.0, 4.0)
CELLS = (("mfeat", "full"), ("mfeat", "10%-keep"))


def method(name: str, alpha: float) -> dict[str, Any]:
    """The method block at weight ``alpha``."""
    if name == "student_only":
        return {"name": name}
    if name == "mi_joint":
        return {"name": name, "alpha": alpha}
    if name == "mi_joint_aux":
        return {"name": name, "alpha": alpha, "beta": alpha}
    return {"name": name, "alpha": alpha, "beta": alpha, "gamma": 0.1}


def spec(dataset: str, setting: str, method_block: dict[str, Any], seed: int) -> dict[str, Any]:
    """One run's spec (same model and schedule as the accuracy bench)."""
    return bench_spec(f"weak-{dataset}", dataset, setting, method_block, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    jobs = []
    for dataset, setting in CELLS:
        jobs += [
            ((dataset, setting, "teacher_only", 0.0, s), spec(dataset, setting, method("student_only", 0), s))
            for s in range(args.seeds)
        ]
        for alpha in ALPHAS:
            for name in ("mi_joint", "mi_joint_aux", "paper"):
                jobs += [
                    ((dataset, setting, name, alpha, s), spec(dataset, setting, method(name, alpha), s))
                    for s in range(args.seeds)
                ]
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        summaries = pool.map(run_one, [data for _, data in jobs])
    grouped: dict[str, list[float]] = {}
    for ((dataset, setting, name, alpha, _), _spec), summary in zip(jobs, summaries, strict=True):
        key = f"{dataset}|{setting}|{name}|{alpha}"
        grouped.setdefault(key, []).append(summary["teacher"]["accuracy"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(grouped, indent=1))
    print("| dataset | labels | method | alpha | teacher test accuracy (%) |\n|---|---|---|---|---|")
    for key, values in grouped.items():
        dataset, setting, name, alpha = key.split("|")
        shown = "—" if name == "teacher_only" else alpha
        mean, std = 100 * statistics.mean(values), 100 * statistics.stdev(values)
        print(f"| {dataset} | {setting} | {name} | {shown} | {mean:.1f} ± {std:.1f} |")


if __name__ == "__main__":
    main()
