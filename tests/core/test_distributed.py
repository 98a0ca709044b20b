"""A run on 2 processes (torchrun, gloo) is the run on 1 process with the same global batch: the same
loss at every step and the same weights, within float32 summation order, for the paper's method
(InfoNCE over every rank's rows, the generator's noise, the discriminator's own step), CRD with memory
banks (sampled negatives, banks updated with every rank's rows) and logit KD from a frozen teacher
with unlabelled samples (the task loss's mean over the labelled rows of every rank). And a run
checkpointed at 2 processes resumes at 1 to the same end: the data order is the world size's to keep.

Dropout is off: its masks are each rank's own draws (``core.parallel``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from core.engine import checkpoint as ckpt
from core.engine.launch import torchrun_command

#: Loss and weight agreement: float32 sums over 64 + 64 rows against one sum over 128 rows.
TOLERANCE = 1e-4

METHODS: dict[str, dict[str, Any]] = {
    "paper": {"method": {"name": "paper", "alpha": 0.5, "beta": 0.5, "gamma": 0.1, "warmup_epochs": 0}},
    "crd": {"method": {"name": "crd", "teacher_epochs": 1, "n_neg": 16, "kd_weight": 0.5}},
    "logit_kd": {
        "method": {"name": "logit_kd", "teacher_epochs": 1},
        "dataset_extra": {"label_fraction": 0.3, "keep_unlabelled": True},
    },
}


def spec_data(method: str, procs: int) -> dict[str, Any]:
    """mfeat, 2 (or for the frozen teachers 1 + 2) epochs of 128-row global batches, no dropout."""
    chosen = METHODS[method]
    return {
        "name": f"dist-{method}",
        "dataset": {
            "name": "mfeat",
            "primary": ["fou", "zer"],
            "auxiliary": ["fac", "pix"],
            **chosen.get("dataset_extra", {}),
        },
        "method": chosen["method"],
        "model": {"dropout": 0.0, "hidden_dim": 32, "repr_dim": 16},
        "train": {"epochs": 2, "batch_size": 128, "device": "cpu"},
        "resources": {"procs_per_node": procs},
    }


def run_ranks(spec: dict[str, Any], workdir: Path, procs: int) -> subprocess.CompletedProcess[str]:
    """``cli.ranks`` as ``procs`` ranks (torchrun), or as one plain process."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir.parent / f"{workdir.name}.json"
    path.write_text(json.dumps(spec))
    args = [str(path), str(workdir)]
    command = torchrun_command(procs, "cli.ranks", args) if procs > 1 else [sys.executable, "-m", "cli.ranks", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(workdir: Path) -> dict[tuple[int, str], float]:
    """The training losses by (step, name)."""
    points = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {(p["step"], p["name"]): p["value"] for p in points if p["name"].startswith("train/")}


def last_weights(workdir: Path) -> dict[str, torch.Tensor]:
    """The networks' and the method's weights in the newest checkpoint."""
    newest = max((workdir / "checkpoints").glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    state = ckpt.from_bytes(newest.read_bytes())
    return {f"nets.{k}": v for k, v in state["nets"].items()} | {
        f"objective.{k}": v for k, v in state["objective"].items()
    }


def assert_same_run(one: Path, two: Path) -> None:
    """Equal loss trajectories and final weights within :data:`TOLERANCE`."""
    first, second = losses(one), losses(two)
    assert first.keys() == second.keys() and len(first) > 20
    worst = max(abs(first[key] - second[key]) / max(1.0, abs(first[key])) for key in first)
    assert worst < TOLERANCE, f"losses differ by {worst:.2e}"
    weights_one, weights_two = last_weights(one), last_weights(two)
    assert weights_one.keys() == weights_two.keys()
    gap = max(float((weights_one[k].float() - weights_two[k].float()).abs().max()) for k in weights_one)
    assert gap < TOLERANCE, f"weights differ by {gap:.2e}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], Path]:
    """The run folder of (method, processes), trained once for the module."""
    runs: dict[tuple[str, int], Path] = {}

    def run(method: str, procs: int) -> Path:
        if (method, procs) not in runs:
            folder = tmp_path_factory.mktemp(f"{method}-{procs}") / "run"
            run_ranks(spec_data(method, procs), folder, procs)
            runs[method, procs] = folder
        return runs[method, procs]

    return run


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_processes_train_as_one_with_the_same_global_batch(
    method: str, trained: Callable[[str, int], Path]
) -> None:
    one, two = trained(method, 1), trained(method, 2)
    assert_same_run(one, two)
    summary = json.loads((two / "summary.json").read_text())
    assert (summary["world_size"], summary["launcher"]) == (2, "torchrun")
    assert json.loads((one / "summary.json").read_text())["world_size"] == 1


def test_a_run_checkpointed_on_two_processes_resumes_on_one(
    trained: Callable[[str, int], Path], tmp_path: Path
) -> None:
    whole = trained("paper", 2)
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    checkpoints = resumed / "checkpoints"
    steps = sorted(int(p.stem.split("-")[1]) for p in checkpoints.glob("step-*.pt"))
    (checkpoints / f"step-{steps[-1]}.pt").unlink()  # as if it had stopped after the first epoch
    (resumed / "summary.json").unlink()
    run_ranks(spec_data("paper", 1), resumed, 1)
    summary = json.loads((resumed / "summary.json").read_text())
    assert (summary["resumed_from_step"], summary["world_size"]) == (steps[0], 1)
    assert_same_run(whole, resumed)
