"""The distillability probe on every built-in dataset and label setting, beside the measured gains.

    python -m bench.probe [--processes 2] [--seeds 3]

Runs ``core.engine.probe`` with the accuracy bench's model and schedule (teacher epochs = the
setting's epochs) for seeds 0..N-1 and writes bench/results/probe.json; ``bench.report_accuracy``
sets the figures beside each setting's best gain over student_only in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

from bench.accuracy import DATASETS, SETTINGS, bench_spec

RESULTS = Path("bench/results/probe.json")


def probe_one(job: tuple[str, str, int]) -> dict[str, Any]:
    """The probe's figures for one dataset, setting and seed."""
    import torch

    from core.engine.probe import probe
    from core.spec import JobSpec

    torch.set_num_threads(1)
    dataset, setting, seed = job
    result = probe(JobSpec.model_validate(bench_spec("probe", dataset, setting, {"name": "student_only"}, seed)))
    keys = ("weighted_r2", "sets", "teacher_val", "student_val", "reachable_val", "room", "verdict", "seconds")
    return {"seed": seed, **{key: result[key] for key in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    jobs = [(dataset, setting, seed) for dataset in DATASETS for setting in SETTINGS for seed in range(args.seeds)]
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        outcomes = pool.map(probe_one, jobs)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for (dataset, setting, _), outcome in zip(jobs, outcomes, strict=True):
        results.setdefault(dataset, {}).setdefault(setting, []).append(outcome)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    for dataset, cells in results.items():
        for setting, runs in cells.items():
            values = ", ".join(f"{run['weighted_r2']:.2f} (room {100 * run['room']:+.1f})" for run in runs)
            print(f"{dataset} {setting}: weighted R^2 {values}")


if __name__ == "__main__":
    main()
