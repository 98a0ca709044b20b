"""Training throughput at 1 and more processes, and what the launcher costs before the first step.

    python -m bench.distributed [--procs 1,2] [--batch 1024] [--steps 40] [--device cpu] [--threads 1] [--ray]

Each world size runs the paper's method on mfeat (bench.throughput's model) with the same global
batch: one plain process for W = 1, torchrun (``core.engine.launch``) for every W (W = 1 included,
to see the launcher alone), and with ``--ray`` Ray Train's TorchTrainer on a local Ray cluster (started
before the clock, as a service's cluster is). Each rank uses ``--threads`` intra-op threads, so W
processes use W times the cores of one: the efficiency per process, (samples/s at W) / (W x samples/s of the plain
process), is what adding a process of the same size buys. The first 5 steps are a warm-up; the
median step over ``--steps`` steps gives samples/s.

"Start to first step" is the wall time from starting the command to the end of the first training
step on rank 0: interpreter and torch import, the rendezvous, the data, building the run, one step.
On Ray it starts when the trainer is built, the cluster already up: Ray's worker actors, their imports
and its process group are the launcher's part.

Prints a markdown table; docs/performance.md records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.throughput import SPEC

WARMUP = 5


def rank_main(out: str, batch: int, steps: int, device: str, started: float) -> None:
    """One rank: join the group, build the run, time ``steps`` steps after the warm-up; rank 0 writes."""
    import torch

    from core import parallel
    from core.data import prepare
    from core.engine.setup import build_run
    from core.engine.trainer import epoch_batches, make_batch, train_step
    from core.spec import JobSpec

    parallel.init_from_environment(device)
    spec = JobSpec.model_validate(
        {**SPEC, "train": {"batch_size": batch, "device": device}, "resources": {"device": device}}
    )
    data = prepare(spec.dataset, spec.task)
    run = build_run(spec, data)
    batches = epoch_batches(run, 0)
    first_step = None
    durations = []
    for index in range(WARMUP + steps):
        rows = batches[index % len(batches)]
        begun = time.perf_counter()
        train_step(run, make_batch(run, rows), epoch=5)  # past the paper's warm-up: every term runs
        if device == "cuda":
            torch.cuda.synchronize()
        if first_step is None:
            first_step = time.time() - started
        if index >= WARMUP:
            durations.append(time.perf_counter() - begun)
    if parallel.is_main():
        median = statistics.median(durations)
        Path(out).write_text(
            json.dumps(
                {
                    "world_size": parallel.world_size(),
                    "launcher": parallel.launcher(),
                    "samples_per_s": batch / median,
                    "first_step_s": first_step,
                }
            )
        )
    parallel.leave()


def measure(procs: int, torchrun: bool, args: argparse.Namespace) -> dict[str, float]:
    """One run of ``procs`` ranks; its rank 0's figures."""
    from core.engine.launch import torchrun_command

    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "figures.json")
        started = time.time()
        rank_args = ["--rank", out, "--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device]
        rank_args += ["--started", repr(started)]
        command = (
            torchrun_command(procs, "bench.distributed", rank_args)
            if torchrun
            else [sys.executable, "-m", "bench.distributed", *rank_args]
        )
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        figures: dict[str, float] = json.loads(Path(out).read_text())
        return figures


def ray_rank(config: dict[str, Any]) -> None:
    """A Ray Train worker of :func:`measure_ray`: Ray formed the group; time like any rank."""
    import torch

    torch.set_num_threads(config["threads"])
    os.environ["MMKD_LAUNCHER"] = "ray"
    rank_main(config["out"], config["batch"], config["steps"], config["device"], config["started"])


def measure_ray(procs: int, args: argparse.Namespace) -> dict[str, float]:
    """One run of ``procs`` Ray Train workers on a local Ray cluster (started before the clock: a
    service's cluster is already up); its rank 0's figures."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "figures.json")
        ray.init(num_cpus=procs, include_dashboard=False, log_to_driver=False)
        try:
            started = time.time()
            config = {"out": out, "batch": args.batch, "steps": args.steps, "device": args.device}
            trainer = TorchTrainer(
                ray_rank,
                train_loop_config={**config, "started": started, "threads": args.threads},
                torch_config=TorchConfig(backend="nccl" if args.device == "cuda" else "gloo"),
                scaling_config=ScalingConfig(num_workers=procs, use_gpu=args.device == "cuda"),
                run_config=RunConfig(storage_path=folder, name="bench"),
            )
            trainer.fit()
        finally:
            ray.shutdown()
        figures: dict[str, float] = json.loads(Path(out).read_text())
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2", help="Comma-separated world sizes.")
    parser.add_argument("--batch", type=int, default=1024, help="The global batch.")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="Intra-op threads of each process.")
    parser.add_argument("--ray", action="store_true", help="Also run each world size on Ray Train (local cluster).")
    parser.add_argument("--rank", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        rank_main(args.rank, args.batch, args.steps, args.device, args.started)
        return
    plain = measure(1, False, args)
    print(f"paper on mfeat, global batch {args.batch}, {args.device}, {args.threads} thread(s) a process\n")
    print("| processes | launcher | samples/s | efficiency per process | start to first step (s) |")
    print("|---:|---|---:|---:|---:|")
    print(f"| 1 | single | {plain['samples_per_s']:.0f} | 1.00 | {plain['first_step_s']:.1f} |")
    for procs in [int(value) for value in args.procs.split(",")]:
        figures = measure(procs, True, args)
        efficiency = figures["samples_per_s"] / (procs * plain["samples_per_s"])
        print(
            f"| {procs} | torchrun | {figures['samples_per_s']:.0f} | {efficiency:.2f} | "
            f"{figures['first_step_s']:.1f} |"
        )
        if args.ray:
            figures = measure_ray(procs, args)
            efficiency = figures["samples_per_s"] / (procs * plain["samples_per_s"])
            print(
                f"| {procs} | ray | {figures['samples_per_s']:.0f} | {efficiency:.2f} | {figures['first_step_s']:.1f} |"
            )


if __name__ == "__main__":
    main()
