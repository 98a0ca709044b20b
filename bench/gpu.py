"""The CUDA path, checked and timed on a GPU (run it where one is lent; docs/performance.md records a run).

    python -m bench.gpu [--epochs 20] [--seeds 2] [--repeats 3]

1. Correctness: for student_only, logit_kd and paper on mfeat, each seed is trained on the CPU, on
   CUDA in float32 and on CUDA with bfloat16 autocast; the student's test accuracy of each is
   printed side by side (they differ only by floating-point order, so they should agree within a
   few points; a broken device path shows up as chance accuracy or a crash).
2. Resume on CUDA: a paper run stopped after a checkpoint and resumed ends with the same weights
   as an uninterrupted run (max absolute difference printed; cuBLAS need not be bit-exact).
3. Export: the student exported by a CUDA run predicts on the CPU what its test metric says.
4. Throughput: bench.throughput's plain loop against the trainer, on CUDA, float32 and bf16.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data import prepare
from core.engine import checkpoint as ckpt
from core.engine.checkpoint import LocalCheckpointStore
from core.engine.export import predict_file
from core.engine.trainer import train
from core.errors import TrainingCancelled
from core.spec import JobSpec
from core.tracking import NullTracker

MFEAT = {"name": "mfeat", "primary": ["fou", "zer", "mor"], "auxiliary": ["fac", "pix", "kar"]}
METHODS: dict[str, dict[str, Any]] = {
    "student_only": {"name": "student_only"},
    "logit_kd": {"name": "logit_kd", "kd_weight": 1.0},
    "paper": {"name": "paper", "alpha": 0.5, "beta": 0.5, "gamma": 0.1},
}


def spec_for(method: dict[str, Any], *, epochs: int, seed: int, device: str, amp: bool) -> JobSpec:
    """An mfeat spec on ``device``."""
    return JobSpec.model_validate(
        {
            "name": f"gpu-{method['name']}",
            "dataset": MFEAT,
            "model": {"hidden_dim": 128, "repr_dim": 64},
            "method": method,
            "train": {"epochs": epochs, "batch_size": 128, "seed": seed, "device": device, "amp": amp},
            "checkpoint": {"every_epochs": None},
        }
    )


class StopAfter(NullTracker):
    """Stops training (as a cancel would) once ``step`` is passed."""

    def __init__(self, step: int) -> None:
        self.step, self.seen = step, 0

    def on_step(self, *, epoch: int, step: int, losses: Any) -> None:
        self.seen = step

    def should_stop(self) -> bool:
        return self.seen >= self.step


def accuracy_table(epochs: int, seeds: int, workdir: Path) -> None:
    """Student test accuracy on CPU, CUDA fp32 and CUDA bf16, per method and seed."""
    print("| method | seed | cpu | cuda fp32 | cuda bf16 | cuda fp32 s | cuda bf16 s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, method in METHODS.items():
        for seed in range(seeds):
            row, seconds = [], []
            for device, amp in (("cpu", False), ("cuda", False), ("cuda", True)):
                spec = spec_for(method, epochs=epochs, seed=seed, device=device, amp=amp)
                started = time.perf_counter()
                summary = train(spec, workdir=workdir / f"{name}-{seed}-{device}-{amp}")
                seconds.append(time.perf_counter() - started)
                row.append(summary["student"]["accuracy"])
            accuracies = " | ".join(f"{value:.4f}" for value in row)
            print(f"| {name} | {seed} | {accuracies} | {seconds[1]:.1f} | {seconds[2]:.1f} |")


def resume_check(workdir: Path) -> None:
    """Uninterrupted against stopped-and-resumed on CUDA (checkpoint every 2 epochs, stop at step 25)."""
    spec = spec_for(METHODS["paper"], epochs=4, seed=0, device="cuda", amp=False)
    spec = spec.model_copy(update={"checkpoint": spec.checkpoint.model_copy(update={"every_epochs": 2})})
    train(spec, workdir=workdir / "a", checkpoints=LocalCheckpointStore(workdir / "a" / "ck"))
    with contextlib.suppress(TrainingCancelled):
        train(
            spec, workdir=workdir / "b", checkpoints=LocalCheckpointStore(workdir / "b" / "ck"), tracker=StopAfter(25)
        )
    resumed = train(spec, workdir=workdir / "b", checkpoints=LocalCheckpointStore(workdir / "b" / "ck"))

    def weights(path: Path) -> dict[str, torch.Tensor]:
        state = ckpt.from_bytes(LocalCheckpointStore(path).load_latest()[1])  # type: ignore[index]
        return dict(state["nets"])

    a, b = weights(workdir / "a" / "ck"), weights(workdir / "b" / "ck")
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(
        f"resume on CUDA: resumed from step {resumed['resumed_from_step']}, max |w_straight - w_resumed| = {worst:.3g}"
    )


def export_check(workdir: Path) -> None:
    """A CUDA-trained student predicts on the CPU what its test accuracy says."""
    spec = spec_for(METHODS["logit_kd"], epochs=10, seed=0, device="cuda", amp=True)
    summary = train(spec, workdir=workdir / "export")
    test_rows = prepare(spec.dataset, spec.task).test.indices
    arrays = np.load(Path(__file__).resolve().parents[1] / "core" / "data" / "builtin" / "mfeat.npz")
    raw = workdir / "test.npz"
    np.savez(raw, **{name: arrays[name][test_rows] for name in spec.dataset.primary})
    predicted = predict_file(workdir / "export" / "student", raw)["prediction"]
    accuracy = float((predicted == arrays["label"][test_rows]).mean())
    print(
        f"export: CUDA-trained student predicting on the CPU: accuracy {accuracy:.4f}, "
        f"its summary says {summary['student']['accuracy']:.4f}"
    )


def throughput(repeats: int, batch_sizes: list[int]) -> None:
    """bench.throughput's plain loop against the trainer on CUDA, float32 and bf16 autocast (both loops
    under the same autocast), 10 epochs each, median of ``repeats`` after a warm-up."""
    from bench import throughput as bench

    print("| batch | autocast | plain loop samples/s | trainer samples/s | trainer / plain |")
    print("|---:|---|---:|---:|---:|")
    for batch_size in batch_sizes:
        for amp in (False, True):
            train_spec = {"epochs": 10, "batch_size": batch_size, "device": "cuda", "amp": amp, "eval_every_epochs": 10}
            base = JobSpec.model_validate({**bench.SPEC, "train": train_spec})
            data = prepare(base.dataset, base.task)
            plain: list[float] = []
            trained: list[float] = []
            for _ in range(repeats + 1):  # the first round warms up
                plain.append(bench.plain_loop(base, data))
                clock = bench.LoopClock()
                with tempfile.TemporaryDirectory() as folder:
                    train(base, workdir=Path(folder), data=data, tracker=clock)
                trained.append(clock.ended - clock.started)
            p, t = statistics.median(plain[1:]), statistics.median(trained[1:])
            samples = 10 * len(data.train)
            print(
                f"| {batch_size} | {'bf16' if amp else 'off'} | {samples / p:.0f} | {samples / t:.0f} | {p / t:.3f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch-sizes", default="128,1024", help="Comma-separated batch sizes for the throughput table."
    )
    args = parser.parse_args()
    assert torch.cuda.is_available(), "bench.gpu needs a CUDA device"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}\n")
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        accuracy_table(args.epochs, args.seeds, workdir)
        print()
        resume_check(workdir)
        export_check(workdir)
        print()
        throughput(args.repeats, [int(size) for size in args.batch_sizes.split(",")])


if __name__ == "__main__":
    main()
