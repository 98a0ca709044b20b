"""The paper's objective taken apart (issue 8, item 3), on mfeat 10%-keep with the accuracy bench's model.

    python -m bench.paper_ablation [--processes 2] [--seeds 5]

Every variant keeps the accuracy bench's schedule and one fixed configuration (no tuning), seeds
0..N-1, so each is compared with student_only on the same seeds (paired gain, 95% t-interval):

- the full objective (alpha = beta = 0.5, gamma = 1: a strong adversarial term, so its effect shows);
- L_adv alone (alpha = beta = 0): its adversarial (fooling) part alone (recon_weight 0), its
  reconstruction part alone (fool_weight 0), and both;
- the full objective with a teacher warm-up (10 epochs of task losses, then a 10-epoch ramp) and
  with a slower teacher (teacher_lr_scale 0.1).

Besides accuracy, each run measures what L_adv is meant to lower, H(T|S): how much of the teacher's
representation the student's explains on the test split, the cross-fitted ridge R^2 of z_T from z_S
(``core.objectives.salience.cross_fitted_r2``, averaged over z_T's non-constant channels). With
noise in G, the fooling part alone can be satisfied without using z_S, so it need not raise it.
Writes bench/results/paper_ablation.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.accuracy import bench_spec
from bench.report_accuracy import fmt_gain, paired_gain

RESULTS = Path("bench/results/paper_ablation.json")
DATASET, SETTING = "mfeat", "10%-keep"
FULL = {"name": "paper", "alpha": 0.5, "beta": 0.5, "gamma": 1.0}
ADV_ONLY = {**FULL, "alpha": 0.0, "beta": 0.0}
VARIANTS: dict[str, dict[str, Any]] = {
    "student_only": {"name": "student_only"},
    "paper (alpha = beta = 0.5, gamma = 1)": FULL,
    "L_adv alone (fooling + reconstruction)": ADV_ONLY,
    "fooling part alone": {**ADV_ONLY, "recon_weight": 0.0},
    "reconstruction part alone": {**ADV_ONLY, "fool_weight": 0.0},
    "paper, teacher warm-up 10 + ramp 10": {**FULL, "warmup_epochs": 10, "ramp_epochs": 10},
    "paper, slower teacher (lr x 0.1)": {**FULL, "teacher_lr_scale": 0.1},
}


def run_variant(job: tuple[str, int]) -> dict[str, Any]:
    """Train one variant and seed; return test accuracies and R^2(z_T | z_S) on the test split."""
    import torch

    from core.data.prepare import prepare
    from core.engine import checkpoint as ckpt
    from core.engine.checkpoint import LocalCheckpointStore
    from core.engine.setup import build_run
    from core.engine.trainer import train
    from core.objectives.salience import cross_fitted_r2
    from core.spec import JobSpec

    torch.set_num_threads(1)
    name, seed = job
    data_spec = bench_spec("paper-ablation", DATASET, SETTING, VARIANTS[name], seed)
    data_spec["checkpoint"] = {"every_epochs": data_spec["train"]["epochs"], "keep_last": 1}
    spec = JobSpec.model_validate(data_spec)
    data = prepare(spec.dataset, spec.task)
    with tempfile.TemporaryDirectory() as workdir:
        store = LocalCheckpointStore(Path(workdir) / "ck", keep_last=1)
        summary = train(spec, workdir=Path(workdir), checkpoints=store, data=data)
        latest = store.load_latest()
        assert latest is not None
        state = ckpt.from_bytes(latest[1])
    run = build_run(spec, data)
    run.nets.load_state_dict(state["nets"])
    run.nets.eval()
    inputs = {key: torch.from_numpy(values) for key, values in data.test.modalities.items()}
    with torch.no_grad():
        z_s, z_t = run.nets.student.represent(inputs), run.nets.teacher.represent(inputs)
    live = z_t.std(0) > 1e-6
    r2 = float(cross_fitted_r2(z_s, z_t[:, live]).mean()) if live.any() else 0.0
    return {
        "seed": seed,
        "student": summary["student"],
        "teacher": summary["teacher"],
        "r2_teacher_from_student": r2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    jobs = [(name, seed) for name in VARIANTS for seed in range(args.seeds)]
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        outcomes = pool.map(run_variant, jobs)
    results: dict[str, list[dict[str, Any]]] = {}
    for (name, _), outcome in zip(jobs, outcomes, strict=True):
        results.setdefault(name, []).append(outcome)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"variants": VARIANTS, "runs": results}, indent=1))
    print(
        "| variant | student test (%) | gain over student_only (95% CI) | teacher test (%) | R² of z_T from z_S |\n"
        "|---|---|---|---|---|"
    )
    for name, runs in results.items():
        student = [100 * run["student"]["accuracy"] for run in runs]
        teacher = [100 * run["teacher"]["accuracy"] for run in runs]
        r2 = [run["r2_teacher_from_student"] for run in runs]
        gain = "—" if name == "student_only" else fmt_gain(paired_gain(runs, results["student_only"]))
        print(
            f"| {name} | {statistics.mean(student):.1f} ± {statistics.stdev(student):.1f} | {gain} "
            f"| {statistics.mean(teacher):.1f} ± {statistics.stdev(teacher):.1f} "
            f"| {statistics.mean(r2):.2f} ± {statistics.stdev(r2):.2f} |"
        )


if __name__ == "__main__":
    main()
