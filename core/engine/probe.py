"""The distillability probe (``mmkd probe SPEC``, or a ``kind: probe`` job): before a long run, how
much of what the teacher decides on can the student's modalities reproduce, and does the student
trained alone already have it?

It trains the three networks on their task losses alone (``student_only``) for
``method.teacher_epochs`` when the spec's method has it, else ``train.epochs``, then runs the
modality-focusing diagnosis of ``core.objectives.salience`` on the training split, for the primary
modalities together and for each one alone:

- ``general_share``: the share of teacher channels the primary modalities explain (R^2 >= 0.5);
- ``decisive_general_share``: the same share weighted by how decisive each channel is (the rise
  of the teacher's cross-entropy when it is permuted), i.e. the share of the teacher's decision
  that rests on modality-general channels; classification only;
- ``weighted_r2``: the decisiveness-weighted mean R^2 (the plain mean without labels).

And on the validation split, for all primary modalities: ``reachable_val``, the teacher's metric
when its representation is replaced by the ridge prediction from its own primary encoders (the
teacher as far as the primary modalities can reproduce it: what a student imitating it could
reach), beside ``student_val``, the student trained alone. ``room`` is the difference (in the
metric's better direction). The modality focusing hypothesis (Xue et al., ICLR 2023) says
cross-modal KD transfers only the modality-general decisive part; ``room`` says whether the
student lacks it. ``verdict`` puts both in a sentence. Checked against docs/results.md there
(``python -m bench.probe``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from core.data.prepare import PreparedData, prepare
from core.engine.evaluation import compute_metrics
from core.engine.health import RunHealth
from core.engine.selection import EpochSelection
from core.engine.setup import build_run
from core.engine.trainer import epoch_batches, run_epoch, split_inputs
from core.errors import DataError
from core.metrics import LOWER_IS_BETTER, PRIMARY_METRIC
from core.objectives.salience import GENERAL_R2, channel_salience, encode, fit_ridge
from core.spec import PROBE_NEEDS_ONE_FILE, JobSpec, TaskKind
from core.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)

#: weighted_r2 at or above this: the teacher's decision rests mostly on what the student can see.
HIGH, LOW = 0.5, 0.25
#: Room below this (a share of the metric for an error such as mae): the student alone has it already.
ROOM = 0.01


def probe_spec(spec: JobSpec) -> JobSpec:
    """The spec of the probe's run: the three networks on their task losses alone for the teacher's epochs."""
    epochs = getattr(spec.method, "teacher_epochs", None) or spec.train.epochs
    data = spec.model_dump(mode="json")
    return JobSpec.model_validate(
        {**data, "kind": "train", "method": {"name": "student_only"}, "train": {**data["train"], "epochs": epochs}}
    )


def summarise(r2: torch.Tensor, decisive: torch.Tensor | None) -> dict[str, float | None]:
    """The three figures of one modality set."""
    general = (r2 >= GENERAL_R2).float()
    weights = decisive if decisive is not None and float(decisive.sum()) > 0 else None
    if weights is None:
        return {"general_share": float(general.mean()), "decisive_general_share": None, "weighted_r2": float(r2.mean())}
    total = float(weights.sum())
    return {
        "general_share": float(general.mean()),
        "decisive_general_share": float((weights * general).sum()) / total,
        "weighted_r2": float((weights * r2).sum()) / total,
    }


def verdict(weighted_r2: float, room: float, threshold: float = ROOM) -> str:
    """What the probe's figures predict about distillation into the student."""
    if weighted_r2 < LOW:
        return (
            "the teacher decides mostly on what only the auxiliary modalities carry: the student cannot reproduce it; "
            "expect little from distillation"
        )
    if room <= threshold:
        return (
            "the student trained alone already reaches what the teacher's primary-modality part gives: "
            "expect no gain from distillation"
        )
    if weighted_r2 >= HIGH:
        return (
            "the student lacks what the primary modalities could reproduce of the teacher: distillation can transfer it"
        )
    return "part of the teacher's decision is reproducible and the student lacks some of it: expect a modest gain"


def validation_metric(task: TaskKind, output: torch.Tensor, labels: np.ndarray | None, metric: str) -> float:
    """The task's primary metric of ``output`` against the validation labels."""
    return compute_metrics(task, output, labels)[metric]


def probe(spec: JobSpec, *, data: PreparedData | None = None, tracker: Tracker | None = None) -> dict[str, Any]:
    """Train the teacher and return the diagnosis (JSON-ready)."""
    if spec.task == "retrieval":
        raise ValueError("the probe needs a task with a head to permute; retrieval has none")
    started = time.monotonic()
    tracker = tracker or NullTracker()
    run_spec = probe_spec(spec)
    data = data if data is not None else prepare(spec.dataset, spec.task)
    if data.train.stream is not None:
        raise DataError(str(spec.dataset.uri), PROBE_NEEDS_ONE_FILE)
    run = build_run(run_spec, data)
    epochs = run.objective.total_epochs
    tracker.on_start(total_epochs=epochs, steps_per_epoch=len(epoch_batches(run, 0)), start_step=0)
    selection, health = EpochSelection(run_spec), RunHealth(PRIMARY_METRIC[spec.task])  # unused: no validation here
    for epoch in range(epochs):
        run_epoch(run, epoch, selection, health, tracker, checkpoints=None)
    teacher, student = run.nets.teacher, run.nets.student
    metric = PRIMARY_METRIC[spec.task]
    primary = list(spec.dataset.primary)
    val, inputs = split_inputs(run, "val")
    with torch.no_grad():
        teacher.eval()
        student.eval()
        teacher_val = validation_metric(spec.task, teacher(inputs)[1], val.label, metric)
        student_val = validation_metric(spec.task, student(inputs)[1], val.label, metric)
        ridge = fit_ridge(*encode(teacher, run.train_inputs, primary))
        reproduced = ridge.predict(encode(teacher, inputs, primary)[0]).float().clamp(min=0.0)  # z is post-ReLU
        reachable_val = validation_metric(spec.task, teacher.head(reproduced), val.label, metric)
    lower = metric in LOWER_IS_BETTER
    room = (student_val - reachable_val) if lower else (reachable_val - student_val)
    threshold = ROOM * abs(student_val) if lower else ROOM
    tracker.on_epoch(
        epoch=epochs, step=run.state.step, metrics={f"teacher/{metric}": teacher_val, f"student/{metric}": student_val}
    )
    labels = run.train_labels if spec.task == "classification" else None
    sets = {"all primary": primary, **{name: [name] for name in primary}} if len(primary) > 1 else {primary[0]: primary}
    rows: dict[str, dict[str, Any]] = {}
    for label, names in sets.items():
        found = channel_salience(teacher, run.train_inputs, names, labels)
        rows[label] = {"modalities": names, **summarise(found.r2, found.decisive)}
    overall = rows["all primary" if len(primary) > 1 else primary[0]]
    result = {
        "kind": "probe",
        "name": spec.name,
        "task": spec.task,
        "seed": spec.train.seed,
        "spec_hash": spec.spec_hash(),
        "data": run.data.info,
        "steps": run.state.step,
        "dataset": spec.dataset.name or spec.dataset.uri or f"dataset {spec.dataset.id}",
        "primary": primary,
        "auxiliary": list(spec.dataset.auxiliary),
        "teacher_epochs": epochs,
        "teacher_val": {metric: teacher_val},
        "student_val": {metric: student_val},
        "reachable_val": {metric: reachable_val},
        "room": room,
        "channels": spec.model.repr_dim,
        "sets": rows,
        "weighted_r2": overall["weighted_r2"],
        "verdict": verdict(overall["weighted_r2"], room, threshold),
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info(
        "probe: weighted R^2 %.3f; validation %s: teacher %.4f, reproducible teacher %.4f, student alone %.4f: %s",
        result["weighted_r2"],
        metric,
        teacher_val,
        reachable_val,
        student_val,
        result["verdict"],
    )
    tracker.on_finish(summary=result)
    return result
