"""``method: auto`` on mfeat 10%-keep against the hand-tuned best row of docs/results.md, and what pruning saves.

    python -m bench.studies [--trials 24] [--seeds 10] [--processes 2]

Protocol:
1. Two studies of ``method: auto`` (the preset space: every method at its defaults first, then TPE
   over the methods and their main weights) with the same budget and sampler seed, on the accuracy
   bench's mfeat 10%-keep setting at its tuning seed (100, not a reported seed): one with the default
   median pruner, one without pruning. Each runs through ``mmkd tune``'s engine (``studies.local``)
   in its own process, one thread each.
2. Epochs: every epoch a trial trained (a frozen teacher's phase included), from its metrics; the
   saving is one minus the pruned study's trial-epochs over the unpruned study's.
3. Test: each study's winning configuration trained on the accuracy bench's seeds 0..N-1 (cached runs,
   the same protocol), against the hand-tuned best row of bench/results/accuracy.json on the same seeds:
   mean, spread and the paired difference with its 95% bootstrap interval.
Raw results go to bench/results/studies.json; docs/results.md's "Studies" section quotes them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.accuracy import LOW_LABEL, RESULTS, TUNING_SEED, bench_spec, run_one
from studies.spec import BaseJobSpec, trial_spec

STUDIES = Path("bench/results/studies.json")
DATASET, SETTING = "mfeat", "10%-keep"


def study_spec(trials: int, pruner: dict[str, Any]) -> dict[str, Any]:
    """The bench's study: ``method: auto`` on the accuracy bench's spec at its tuning seed."""
    base = bench_spec("bench-auto", DATASET, SETTING, {"name": "auto"}, TUNING_SEED)
    return {"name": f"auto-{pruner['name']}", "base": base, "trials": trials, "pruner": pruner, "reference": None}


def run_study(args: tuple[dict[str, Any], str]) -> dict[str, Any]:
    """One study through the local engine in ``folder``; its result, trials, epochs and wall time."""
    import optuna
    import torch

    from core.engine.tracking_local import FanOutTracker, MetricsFileTracker
    from core.engine.trainer import train
    from core.metrics import from_jsonl
    from studies.local import tune
    from studies.spec import StudySpec

    torch.set_num_threads(1)
    body, folder = args
    spec = StudySpec.model_validate(body)
    from core.data import prepare

    data = prepare(trial_spec(spec.base, {"method.name": "student_only"}).dataset, "classification")

    def train_run(job_spec: Any, workdir: Path, tracker: Any) -> dict[str, Any]:
        workdir.mkdir(parents=True)
        with MetricsFileTracker(workdir / "metrics.jsonl") as record:
            return train(job_spec, workdir=workdir, tracker=FanOutTracker(record, tracker), data=data)

    out = Path(folder) / spec.name
    started = time.monotonic()
    result = tune(spec, out=out, train_run=train_run, echo=lambda line: print(f"{spec.name}: {line}", flush=True))
    seconds = time.monotonic() - started
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{out / 'optuna.db'}")
    trials = []
    for trial in study.trials:
        if trial.state.name == "WAITING":  # an enqueued default the budget did not reach
            continue
        points = from_jsonl((out / f"trial-{trial.number}-s0" / "metrics.jsonl").read_text())
        epochs = len({point.epoch for point in points if point.name.startswith("val/")})
        trials.append(
            {"number": trial.number, "state": trial.state.name.lower(), "params": trial.params, "epochs": epochs}
            | {"value": trial.value}
        )
    return {"result": result, "trials": trials, "seconds": seconds}


def paired(ours: list[float], theirs: list[float], resamples: int = 10_000) -> dict[str, float]:
    """Mean paired difference (points) and its 95% bootstrap interval over seeds."""
    differences = 100 * (np.array(ours) - np.array(theirs))
    rng = np.random.default_rng(0)
    draws = differences[rng.integers(0, len(differences), size=(resamples, len(differences)))].mean(axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"mean": float(differences.mean()), "low": float(low), "high": float(high)}


def main() -> None:
    parser = argparse.ArgumentParser(description="method: auto against the hand-tuned best row; pruning's saving.")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=10, help="Report seeds (the accuracy bench's 10%% setting: 10).")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    accuracy = json.loads(RESULTS.read_text())[DATASET][SETTING]["runs"]
    assert SETTING in LOW_LABEL
    best_row = max(accuracy, key=lambda row: np.mean([run["student"]["accuracy"] for run in accuracy[row]]))
    studies = {
        "median": study_spec(args.trials, {"name": "median"}),
        "none": study_spec(args.trials, {"name": "none"}),
    }
    with tempfile.TemporaryDirectory() as folder, multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        outcomes = dict(zip(studies, pool.map(run_study, [(body, folder) for body in studies.values()]), strict=True))
        reported: dict[str, Any] = {}
        for name, outcome in outcomes.items():
            values = outcome["result"]["winner"]["values"]
            base = studies[name]["base"]
            specs = []
            for seed in range(args.seeds):  # the accuracy bench's report seeds
                seeded = BaseJobSpec.model_validate({**base, "train": {**base["train"], "seed": seed}})
                specs.append(trial_spec(seeded, values).model_dump(mode="json"))
            runs = pool.map(run_one, specs)
            reported[name] = [run["student"]["accuracy"] for run in runs]
    hand = [run["student"]["accuracy"] for run in sorted(accuracy[best_row], key=lambda r: r["seed"])][: args.seeds]
    alone = [run["student"]["accuracy"] for run in sorted(accuracy["student_only"], key=lambda r: r["seed"])][
        : args.seeds
    ]
    pruned_epochs = sum(trial["epochs"] for trial in outcomes["median"]["trials"])
    full_epochs = sum(trial["epochs"] for trial in outcomes["none"]["trials"])
    summary = {
        "setting": f"{DATASET} {SETTING}",
        "trials": args.trials,
        "seeds": args.seeds,
        "hand_tuned": {"row": best_row, "test": hand},
        "student_only": {"test": alone},
        "studies": {
            name: {
                **outcomes[name],
                "test": reported[name],
                "against_hand_tuned": paired(reported[name], hand),
                "against_student_only": paired(reported[name], alone),
            }
            for name in studies
        },
        "trial_epochs": {"median": pruned_epochs, "none": full_epochs, "saved": 1 - pruned_epochs / full_epochs},
    }
    STUDIES.parent.mkdir(parents=True, exist_ok=True)
    STUDIES.write_text(json.dumps(summary, indent=1))
    for name in studies:
        test = 100 * np.array(reported[name])
        gap = summary["studies"][name]["against_hand_tuned"]
        winner = outcomes[name]["result"]["winner"]["values"]
        print(
            f"{name}: winner {winner}, test {test.mean():.1f} +- {test.std():.1f}, "
            f"vs {best_row} {gap['mean']:+.1f} [{gap['low']:+.1f}, {gap['high']:+.1f}], "
            f"{outcomes[name]['seconds']:.0f} s"
        )
    print(
        f"trial-epochs: {pruned_epochs} pruned vs {full_epochs} unpruned, saved {summary['trial_epochs']['saved']:.0%}"
    )


if __name__ == "__main__":
    main()
