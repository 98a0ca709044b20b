"""The trainer: one run of teacher, auxiliary model and student under one method. Read top to bottom.

``train`` builds everything from the spec, resumes from the newest checkpoint when there is one,
loops over epochs and steps, evaluates on the validation split (keeping the best epoch's weights
under ``train.select: best_val`` and watching for the warnings of ``core.engine.health``),
checkpoints, and ends with one test-split evaluation and the
export of the student, both of the selected epoch's weights. With ``reference`` in the spec it then
trains the reference (student_only) on the same split and seed and adds the paired gain to the summary.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from core import parallel
from core.data.prepare import Part, PreparedData, prepare
from core.engine import checkpoint as ckpt
from core.engine.evaluation import compute_metrics, paired_bootstrap
from core.engine.export import export_student
from core.engine.health import RunHealth
from core.engine.selection import EpochSelection
from core.engine.setup import Run, build_run
from core.errors import MmkdError, NonFiniteLossError, TrainingCancelled
from core.metrics import PRIMARY_METRIC
from core.models.network import MultimodalNet
from core.objectives.base import Batch, Forward, Role
from core.spec import JobSpec
from core.tracking import CheckpointStore, NullTracker, Tracker

log = logging.getLogger(__name__)


def epoch_batches(run: Run, epoch: int) -> list[torch.Tensor]:
    """The global batches of one epoch: a permutation seeded by (seed, epoch), so resuming can replay it
    and every rank draws the same one, at any world size. The last batch is cut to a multiple of the
    world size (every rank holds as many rows; at most W - 1 samples sit out that epoch) and dropped
    below 2 rows a rank (a 1-sample batch has no contrastive negatives, and BatchNorm cannot train on
    one row)."""
    seed = run.spec.train.seed * 1_000_003 + epoch
    stream = run.data.train.stream
    if stream is None:
        order = torch.randperm(run.n_train, generator=torch.Generator().manual_seed(seed))
    else:  # a sharded dataset's: a window of blocks at a time (core.data.shards), each block read once
        order = torch.from_numpy(stream.order(seed))
    batches = list(order.split(run.spec.train.batch_size))
    batches[-1] = batches[-1][: parallel.even_length(len(batches[-1]))]
    if len(batches) > 1 and len(batches[-1]) < 2 * parallel.world_size():
        batches.pop()
    return batches


def make_batch(run: Run, rows: torch.Tensor) -> Batch:
    """This rank's rows of a global batch, sliced from the (device-resident) training tensors, or read
    through the block cache of a sharded dataset (which stays off the device)."""
    local = parallel.local(rows)
    rows = local.to(run.device)
    if run.data.train.stream is None:
        inputs = {name: values[rows] for name, values in run.train_inputs.items()}
    else:
        read = run.data.train.take(local.numpy())
        inputs = {name: torch.from_numpy(values).to(run.device) for name, values in read.items()}
    labels = None if run.train_labels is None else run.train_labels[rows]
    return Batch(inputs, labels, rows)


def forward(run: Run, batch: Batch, roles: dict[str, Role]) -> Forward:
    """Run the networks the method uses this epoch: trained ones with grad, frozen ones without."""
    fwd = Forward(z={}, out={}, target={})
    for name, net in run.nets.named_networks().items():
        if roles[name] == "idle":
            continue
        net.train(roles[name] == "train")
        with torch.set_grad_enabled(roles[name] == "train"):
            fwd.z[name], fwd.out[name] = net(batch.inputs)
            if net.target_encoder is not None:
                fwd.target[name] = net.embed_target(batch.inputs)
    return fwd


def train_step(run: Run, batch: Batch, epoch: int) -> dict[str, float]:
    """One optimiser step on the summed, weighted loss terms; then the discriminator's own step."""
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
        fwd = forward(run, batch, run.objective.roles(epoch))
        terms = run.objective.losses(run.nets, batch, fwd, epoch)
        stacked = torch.stack([value.float() for value in terms.values()])
        total = stacked.sum()
    # One device sync per step: all terms come back together, as their mean over ranks (the global
    # batch's), so every rank sees the same values and a non-finite one stops them all at this step.
    reported = parallel.mean(torch.cat([stacked, total[None]]).detach())
    values = dict(zip([*terms, "total"], reported.tolist(), strict=True))
    if not all(map(math.isfinite, values.values())):
        raise NonFiniteLossError(run.state.step + 1, values)
    run.optimizer.zero_grad(set_to_none=True)
    total.backward()
    parallel.average_gradients(run.main_parameters)
    if run.spec.train.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.main_parameters, run.spec.train.grad_clip)
    run.optimizer.step()
    parallel.average_running_statistics([run.nets, run.objective])
    if run.disc_optimizer is not None:
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
            disc_terms = run.objective.discriminator_step(fwd)
        if not disc_terms:
            return values
        disc = disc_terms["disc"]
        for group in run.disc_optimizer.param_groups:  # a function of the epoch: nothing to checkpoint
            group["lr"] = run.disc_lr(epoch)
        run.disc_optimizer.zero_grad(set_to_none=True)
        disc.backward()
        parallel.average_gradients(run.objective.discriminator_parameters())
        run.disc_optimizer.step()
        values["disc"] = float(parallel.mean(disc.detach()))
    return values


#: Rows per forward pass when a split is evaluated: its inputs and activations never sit on the device
#: all at once, whatever the split's size (the outputs, a row of logits per sample, do).
EVAL_ROWS = 4096


def split_inputs(run: Run, split: str) -> tuple[Part, dict[str, torch.Tensor]]:
    """The val or test split and its modalities as tensors on the run's device (the probe's small val)."""
    part = run.data.val if split == "val" else run.data.test
    return part, {name: torch.from_numpy(values).to(run.device) for name, values in part.modalities.items()}


def split_outputs(run: Run, net: MultimodalNet, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``net``'s outputs on the val or test split, and its target embeddings when it has a target
    encoder (retrieval), computed :data:`EVAL_ROWS` rows at a time in eval mode. In a distributed run
    each rank computes its contiguous shard of the split and every rank gets all the outputs."""
    part = run.data.val if split == "val" else run.data.test
    net.eval()
    first, stop = parallel.shard_range(len(part))
    spans = [(start, min(start + EVAL_ROWS, stop)) for start in range(first, stop, EVAL_ROWS)] or [(0, 0)]
    outputs, targets = [], []
    for start, end in spans:
        rows = slice(start, end) if end > start else slice(0, 1)  # an empty shard runs one row for the shapes
        inputs = {name: torch.from_numpy(values).to(run.device) for name, values in part.take(rows).items()}
        outputs.append(net(inputs)[1][: end - start])
        if net.target_encoder is not None:
            targets.append(net.embed_target(inputs)[: end - start])
    output = parallel.gather_uneven(torch.cat(outputs))
    return output, (parallel.gather_uneven(torch.cat(targets)) if targets else None)


@torch.no_grad()
def evaluate(run: Run, split: str) -> dict[str, float]:
    """Metrics of all three networks on the val or test split, named ``{network}/{metric}``.

    Always in float32, also when training runs under bf16 autocast: the reported metrics are those
    of the exported student, which predicts in float32.
    """
    part = run.data.val if split == "val" else run.data.test
    metrics: dict[str, float] = {}
    for name, net in run.nets.named_networks().items():
        output, target = split_outputs(run, net, split)
        for metric, value in compute_metrics(run.spec.task, output, part.label, target).items():
            metrics[f"{name}/{metric}"] = value
    return metrics


def save_checkpoint(
    run: Run, selection: EpochSelection, health: RunHealth, checkpoints: CheckpointStore | None, tracker: Tracker
) -> None:
    """Store the full training state, the epoch selected so far and the warnings' state at the current step boundary."""
    if checkpoints is None:
        return
    with tracker.busy(f"checkpoint at step {run.state.step}"):
        state = {**run.state_dict(), "selection": selection.state_dict(), "health": health.state_dict()}
        if not parallel.is_main():  # every rank gave its RNG to the state; rank 0 stores it
            return
        payload = ckpt.to_bytes(state)
        key = checkpoints.save(run.state.step, payload)
    if not key:  # the store refused it (a launcher's relay: the run stops at its next stop check)
        return
    log.info("checkpoint at step %d (%d bytes)", run.state.step, len(payload))
    tracker.on_checkpoint(epoch=run.state.epoch, step=run.state.step, key=key)


def resume(run: Run, selection: EpochSelection, health: RunHealth, checkpoints: CheckpointStore | None) -> None:
    """Load the newest checkpoint into ``run``, ``selection`` and ``health`` if there is one: rank 0 reads
    it and every rank loads the same bytes."""
    latest = None if checkpoints is None or not parallel.is_main() else checkpoints.load_latest()
    latest = parallel.broadcast_object(latest)
    if latest is None:
        return
    step, payload = latest
    state = ckpt.from_bytes(payload)
    if state["spec_hash"] != run.spec.spec_hash():
        raise MmkdError(f"checkpoint at step {step} was written for another spec; refusing to resume")
    if state["data_sha256"] != run.data.info["sha256"]:
        raise MmkdError(f"checkpoint at step {step} was trained on other data (the file changed); refusing to resume")
    run.load_state_dict(state)
    log.info("resumed from the checkpoint at step %d", step)
    selection.load_state_dict(state.get("selection"))
    health.load_state_dict(state.get("health"))


def run_epoch(
    run: Run,
    epoch: int,
    selection: EpochSelection,
    health: RunHealth,
    tracker: Tracker,
    checkpoints: CheckpointStore | None,
) -> None:
    """The steps of one epoch, from wherever a resumed run left it; then the schedule's step, and the
    run's position moves to the next epoch's start."""
    run.state.epoch = epoch
    every_steps = run.spec.checkpoint.every_steps
    note = run.objective.begin_epoch(run.nets, run.train_inputs, run.train_labels, epoch)
    if note:
        log.info("%s", note)
    for rows in epoch_batches(run, epoch)[run.state.batch_in_epoch :]:
        if parallel.any_rank(tracker.should_stop()):  # rank 0's tracker decides for every rank
            raise TrainingCancelled(run.state.step)
        losses = train_step(run, make_batch(run, rows), epoch)
        run.state.step += 1
        if run.state.batch_in_epoch == 0:
            log.info("epoch %d, step %d: %s", epoch + 1, run.state.step, _shown(losses))
        run.state.batch_in_epoch += 1
        tracker.on_step(epoch=epoch, step=run.state.step, losses=losses)
        if every_steps and run.state.step % every_steps == 0:
            save_checkpoint(run, selection, health, checkpoints, tracker)
    run.scheduler.step()
    run.state.epoch, run.state.batch_in_epoch = epoch + 1, 0


def validate(run: Run, epoch: int, selection: EpochSelection, health: RunHealth, tracker: Tracker) -> None:
    """Validation after ``epoch`` (0-based); offered to the selection when the student trained in it, and
    to the health watch, whose warnings go to the tracker."""
    with tracker.busy(f"validation after epoch {epoch + 1}"):
        metrics = evaluate(run, "val")
    roles = run.objective.roles(epoch)
    student_epoch = None
    if roles["student"] == "train":
        student_epoch = sum(run.objective.roles(past)["student"] == "train" for past in range(epoch + 1))
    tracker.on_epoch(epoch=epoch + 1, step=run.state.step, metrics=metrics, student_epoch=student_epoch)
    shown = ", ".join(f"{name} {value:.4f}" for name, value in sorted(metrics.items()))
    log.info("epoch %d/%d, step %d: validation %s", epoch + 1, run.objective.total_epochs, run.state.step, shown)
    if roles["student"] == "train":  # a frozen-teacher method's phase 1 is not a candidate
        selection.offer(epoch + 1, metrics, run.nets)
    training = [name for name, role in roles.items() if role == "train"]
    for warning in health.observe(epoch + 1, metrics, training=training, distilling=run.objective.distilling(epoch)):
        log.warning("%s: %s", warning.kind, warning.message)
        tracker.on_warning(kind=warning.kind, message=warning.message, data=warning.data())


def finish(
    run: Run, workdir: Path, started: float, selected_epoch: int, health: RunHealth, gain: dict[str, Any] | None
) -> dict[str, Any]:
    """Test-split evaluation once, the student export, and ``summary.json``, all of the weights in ``run``;
    ``gain`` (the reference's comparison) goes into the summary when the spec asked for one."""

    def by_network(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
        return {
            name: {key.split("/", 1)[1]: value for key, value in metrics.items() if key.startswith(f"{name}/")}
            for name in ("student", "teacher", "auxiliary")
        }

    test = by_network(evaluate(run, "test"))
    validation = by_network(evaluate(run, "val"))
    if not parallel.is_main():  # every rank evaluated its shard; rank 0 exports and writes the summary
        return {}
    export_student(
        workdir / "student",
        spec=run.spec,
        student=run.nets.student,
        normaliser=run.data.normaliser,
        shapes=run.data.shapes,
        class_names=run.data.class_names,
        metrics=test["student"],
    )
    summary: dict[str, Any] = {
        "name": run.spec.name,
        "method": run.spec.method.name,
        "dataset": run.spec.dataset.name or run.spec.dataset.uri or f"dataset {run.spec.dataset.id}",
        "task": run.spec.task,
        "seed": run.spec.train.seed,
        "spec_hash": run.spec.spec_hash(),
        **test,
        "validation": validation,
        "data": run.data.info,
        "epochs": run.objective.total_epochs,
        "selected_epoch": selected_epoch,
        "steps": run.state.step,
        "resumed_from_step": run.resumed_from_step,
        "seconds": round(time.monotonic() - started, 3),
        "world_size": parallel.world_size(),
        "launcher": parallel.launcher(),
        "warnings": [
            {"kind": warning.kind, "message": warning.message, **warning.data()} for warning in health.warnings
        ],
    }
    if gain is not None:
        summary["gain"] = gain
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def fit(
    spec: JobSpec, data: PreparedData, tracker: Tracker, checkpoints: CheckpointStore | None
) -> tuple[Run, int, RunHealth]:
    """Build the run, resume it from the newest checkpoint, train every remaining epoch and apply the
    epoch selection: (the run holding the selected weights, the selected epoch, the health watch)."""
    with tracker.busy("setup"):  # long stretches without steps are progress, not a stall
        run = build_run(spec, data)
        selection, health = EpochSelection(spec), RunHealth(PRIMARY_METRIC[spec.task])
        resume(run, selection, health, checkpoints)
    log.info(
        "%s on %s: %d training samples, %d epochs of %d steps, on %s",
        spec.method.name,
        spec.dataset.name or spec.dataset.uri or f"dataset {spec.dataset.id}",
        run.n_train,
        run.objective.total_epochs,
        len(epoch_batches(run, 0)),
        run.device,
    )
    tracker.on_start(
        total_epochs=run.objective.total_epochs,
        steps_per_epoch=len(epoch_batches(run, 0)),
        start_step=run.state.step,
    )
    for epoch in range(run.state.epoch, run.objective.total_epochs):
        run_epoch(run, epoch, selection, health, tracker, checkpoints)
        last = epoch + 1 == run.objective.total_epochs
        if last or (epoch + 1) % spec.train.eval_every_epochs == 0:
            validate(run, epoch, selection, health, tracker)
        every = spec.checkpoint.every_epochs
        if every and ((epoch + 1) % every == 0 or last):
            save_checkpoint(run, selection, health, checkpoints, tracker)
    return run, selection.apply(run.nets, run.objective.total_epochs), health


def mark_progress(tracker: Tracker, what: str) -> None:
    """Progress without a step of the job's own: an empty busy stretch, which restarts a stall watch's clock."""
    with tracker.busy(what):
        pass


class _ReferenceTracker(NullTracker):
    """What the reference's training tells the job's tracker: nothing of its steps, epochs or warnings
    (they are not the job's), but each step is progress for a stall watch (a short busy stretch that
    restarts its clock: one busy stretch around the whole reference would outlast a worker's limit on
    such stretches), its setup and evaluations are busy stretches, and a cancel or a time limit stops
    it."""

    def __init__(self, outer: Tracker) -> None:
        self.outer = outer

    def on_step(self, *, epoch: int, step: int, losses: Mapping[str, float]) -> None:
        mark_progress(self.outer, "reference: step")

    def busy(self, what: str) -> AbstractContextManager[None]:
        return self.outer.busy(f"reference: {what}")

    def should_stop(self) -> bool:
        return self.outer.should_stop()


def reference_spec(spec: JobSpec) -> JobSpec:
    """The reference's spec: the job's, with the reference method at its defaults and no reference of its own."""
    assert spec.reference is not None
    data = spec.model_dump(mode="json")
    return JobSpec.model_validate({**data, "method": {"name": spec.reference.method}, "reference": None})


@torch.no_grad()
def student_outputs(run: Run, split: str) -> torch.Tensor:
    """The student's outputs on the val or test split, in float32."""
    return split_outputs(run, run.nets.student, split)[0].float()


def reference_gain(run: Run, tracker: Tracker) -> dict[str, Any]:
    """Train the reference on the same data, split and seed (not checkpointed: a resumed job trains it
    again) and compare the two students on the test split with a paired bootstrap. The method's run
    gives up its training state first, so the two never hold the device's memory together."""
    spec = run.spec
    assert spec.reference is not None
    ours = student_outputs(run, "test")
    run.release_training_state()
    reference, _, _ = fit(reference_spec(spec), run.data, _ReferenceTracker(tracker), None)
    theirs = student_outputs(reference, "test")
    del reference

    def check() -> None:  # every 100 resamples: progress for the stall watch, and a cancel point
        mark_progress(tracker, "reference: paired bootstrap")
        if parallel.any_rank(tracker.should_stop()):  # every rank resamples alike: they stop together
            raise TrainingCancelled(run.state.step)

    metric = PRIMARY_METRIC[spec.task]
    labels = run.data.test.label
    assert labels is not None
    compared = paired_bootstrap(
        spec.task, metric, ours, theirs, labels, resamples=spec.reference.resamples, seed=spec.train.seed, check=check
    )
    log.info(
        "reference %s: test %s %.4f vs %.4f, gain %+.4f [%+.4f, %+.4f]",
        spec.reference.method,
        metric,
        compared["student"],
        compared["reference"],
        compared["value"],
        compared["low"],
        compared["high"],
    )
    return {"reference_method": spec.reference.method, **compared}


def train(
    spec: JobSpec,
    *,
    workdir: Path,
    tracker: Tracker | None = None,
    checkpoints: CheckpointStore | None = None,
    data: PreparedData | None = None,
) -> dict[str, Any]:
    """Train under ``spec`` (and its reference, when it asks for one); write ``workdir/summary.json`` and
    ``workdir/student/``; return the summary.

    In a distributed run every rank calls this with the same arguments; rank 0 alone reports to
    ``tracker``, writes checkpoints, the export and the summary (other ranks return an empty dict)."""
    started = time.monotonic()
    tracker = tracker if tracker is not None and parallel.is_main() else NullTracker()
    workdir.mkdir(parents=True, exist_ok=True)
    with tracker.busy("setup"):
        data = data if data is not None else prepare(spec.dataset, spec.task)
    run, selected_epoch, health = fit(spec, data, tracker, checkpoints)
    gain = reference_gain(run, tracker) if spec.reference is not None else None
    with tracker.busy("test evaluation and export"):
        summary = finish(run, workdir, started, selected_epoch, health, gain)
    if not summary:
        return summary
    log.info("finished: epoch %d selected, test %s", selected_epoch, _shown(summary["student"]))
    tracker.on_finish(summary=summary)
    return summary


def _shown(values: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in values.items())
