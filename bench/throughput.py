"""Trainer throughput against a minimal plain-PyTorch loop computing the same networks and losses.

    python -m bench.throughput [--repeats 5] [--epochs 10] [--threads 1]

Both run the paper's method on mfeat (full labels) in this process, alternating, for the same
number of optimisation steps from the same seed. The plain loop is what a researcher would write:
the same three networks, projection heads, generator and discriminator, the same loss terms, one
AdamW step and one discriminator step per batch, and nothing else. The trainer is timed twice:
"train only" (validation once at the end) and "as configured" (validation every epoch, test
evaluation, student export), each measured over its training loop (start event to last step) and
once end to end. Prints a markdown table; docs/performance.md records a run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from core.data import prepare
from core.engine.setup import build_run
from core.engine.trainer import epoch_batches, train
from core.objectives.losses import info_nce
from core.objectives.paper import PaperObjective
from core.spec import JobSpec
from core.tracking import NullTracker

SPEC = {
    "name": "throughput",
    "dataset": {"name": "mfeat", "primary": ["fou", "zer", "mor"], "auxiliary": ["fac", "pix", "kar"]},
    "model": {"hidden_dim": 128, "repr_dim": 64, "dropout": 0.1},
    "method": {"name": "paper", "alpha": 0.5, "beta": 0.5, "gamma": 0.1},
    "checkpoint": {"every_epochs": None},
}


class LoopClock(NullTracker):
    """Times the training loop proper: from the start event to the last step."""

    def on_start(self, *, total_epochs: int, steps_per_epoch: int, start_step: int) -> None:
        self.started = self.ended = time.perf_counter()

    def on_step(self, *, epoch: int, step: int, losses: Mapping[str, float]) -> None:
        self.ended = time.perf_counter()


def plain_loop(spec: JobSpec, data: object) -> float:
    """The reference: the same computation, hand-written (under bf16 autocast when the spec asks for
    it on CUDA, as the trainer does). Returns the loop's seconds."""
    run = build_run(spec, data)  # type: ignore[arg-type]  # same init, same optimisers
    started = time.perf_counter()
    nets, objective = run.nets, run.objective
    assert isinstance(objective, PaperObjective)
    method = objective.method
    x_all, y_all = run.train_inputs, run.train_labels
    assert y_all is not None
    for epoch in range(spec.train.epochs):
        for rows in epoch_batches(run, epoch):
            x, y = {k: v[rows] for k, v in x_all.items()}, y_all[rows]
            nets.train()
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
                z_s, out_s = nets.student(x)
                z_t, out_t = nets.teacher(x)
                z_a, out_a = nets.auxiliary(x)
                loss = F.cross_entropy(out_s, y) + F.cross_entropy(out_t, y) + F.cross_entropy(out_a, y)
                tau = method.temperature
                ts = info_nce(objective.proj_ts_teacher(z_t), objective.proj_ts_student(z_s), tau)
                ta = info_nce(objective.proj_ta_teacher(z_t), objective.proj_ta_auxiliary(z_a), tau)
                loss = loss + method.alpha * ts + method.beta * ta
                fake = objective.generate(z_s)
                logit = objective.critic(z_s, fake)
                fool = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
                loss = loss + method.gamma * (fool + method.recon_weight * F.mse_loss(fake, z_t.detach()))
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(run.main_parameters, spec.train.grad_clip or float("inf"))
            run.optimizer.step()
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
                real_logit, fake_logit = (
                    objective.critic(z_s.detach(), z_t.detach()),
                    objective.critic(z_s.detach(), fake.detach()),
                )
                disc = F.binary_cross_entropy_with_logits(
                    real_logit, torch.ones_like(real_logit)
                ) + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
            assert run.disc_optimizer is not None
            run.disc_optimizer.zero_grad(set_to_none=True)
            disc.backward()
            run.disc_optimizer.step()
        run.scheduler.step()
    if run.device.type == "cuda":
        torch.cuda.synchronize()  # the trainer syncs once a step (its losses are read back); count all the work
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = JobSpec.model_validate({**SPEC, "train": {"epochs": args.epochs, "batch_size": 128}})
    configured = base
    train_only = base.model_copy(update={"train": base.train.model_copy(update={"eval_every_epochs": args.epochs})})
    data = prepare(base.dataset, base.task)
    layout = build_run(base, data)
    samples_per_run = sum(len(rows) for epoch in range(args.epochs) for rows in epoch_batches(layout, epoch))

    def trainer(spec: JobSpec, end_to_end: bool) -> Callable[[], float]:
        def call() -> float:
            clock = LoopClock()
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as workdir:
                train(spec, workdir=Path(workdir), data=data, tracker=clock)
            return time.perf_counter() - started if end_to_end else clock.ended - clock.started

        return call

    calls: dict[str, Callable[[], float]] = {
        "plain loop (training loop only)": lambda: plain_loop(base, data),
        "trainer, training loop, validation at the end only": trainer(train_only, end_to_end=False),
        "trainer, training loop with validation every epoch": trainer(configured, end_to_end=False),
        "trainer, end to end (setup, loop, test, export)": trainer(configured, end_to_end=True),
    }
    timings: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm-up: allocator, kernels, lazy imports (sklearn, torch.export)
        call()
    for _ in range(args.repeats):
        for name, call in calls.items():
            timings[name].append(samples_per_run / call())
    reference = statistics.median(timings["plain loop (training loop only)"])
    print(
        f"paper on mfeat, {args.epochs} epochs x {len(epoch_batches(layout, 0))} steps, "
        f"batch 128, {args.threads} thread(s), {args.repeats} repeats, torch {torch.__version__}\n"
    )
    print("| loop | samples/s (median) | min | max | ratio to plain |")
    print("|---|---|---|---|---|")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} | {min(values):.0f} | {max(values):.0f} | {median / reference:.3f} |")


if __name__ == "__main__":
    main()
