"""The student recipe: label smoothing in the task loss, and ``train.select`` (best_val | last)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from core.engine import checkpoint as ckpt
from core.engine.checkpoint import LocalCheckpointStore
from core.engine.selection import EpochSelection
from core.engine.trainer import train
from core.errors import TrainingCancelled
from core.objectives import OBJECTIVES
from core.objectives.base import Batch, Forward
from core.objectives.losses import task_loss
from core.spec import JobSpec
from core.tracking import NullTracker

# Softmax of [ln 2, 0, 0] is (1/2, 1/4, 1/4); of [0, 0, 0] a third each; the third row has no label.
LOGITS = torch.tensor([[math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0], [5.0, -5.0, 0.0]])
LABELS = torch.tensor([0, 2, -1])
# eps = 0.3, K = 3: row 0 is 0.7 * ln 2 + 0.3 * (ln 2 + ln 4 + ln 4) / 3 = 1.2 ln 2; row 1 is ln 3.
SMOOTHED = (1.2 * math.log(2.0) + math.log(3.0)) / 2


def spec_of(method: str = "student_only", **train: Any) -> JobSpec:
    """A small mfeat run; ``train`` fields override the defaults."""
    return JobSpec.model_validate(
        {
            "name": "recipe",
            "dataset": {"name": "mfeat", "primary": ["fou", "mor"], "auxiliary": ["kar"], "label_fraction": 0.5},
            "model": {"hidden_dim": 16, "repr_dim": 8, "dropout": 0.2},
            "method": {"name": method},
            "train": {"epochs": 2, "batch_size": 256, **train},
            "checkpoint": {"every_epochs": 1},
        }
    )


# AdamW at lr 0.08 without a schedule overshoots on this run: validation accuracy peaks at
# epoch 5 of 6 (0.69, then 0.65), so best_val and last export different weights.
PEAKING: dict[str, Any] = {"epochs": 6, "lr": 0.08, "scheduler": "none"}


class ValidationRecorder(NullTracker):
    """The student's validation accuracy after each epoch; stops after ``stop_after`` steps."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.accuracy: list[float] = []
        self.steps = 0
        self.stop_after = stop_after

    def on_step(self, *, epoch: int, step: int, losses: Mapping[str, float]) -> None:
        self.steps += 1

    def on_epoch(
        self, *, epoch: int, step: int, metrics: Mapping[str, float], student_epoch: int | None = None
    ) -> None:
        self.accuracy.append(metrics["student/accuracy"])

    def should_stop(self) -> bool:
        return self.stop_after is not None and self.steps >= self.stop_after


def checkpoint_nets(folder: Path, epoch: int) -> dict[str, torch.Tensor]:
    """The networks' weights in the checkpoint written at the end of ``epoch`` (one per epoch)."""
    steps = sorted(int(path.stem.split("-")[1]) for path in folder.glob("step-*.pt"))
    nets: dict[str, torch.Tensor] = ckpt.from_bytes((folder / f"step-{steps[epoch - 1]}.pt").read_bytes())["nets"]
    return nets


def test_label_smoothing_is_the_closed_form_over_labelled_samples() -> None:
    assert task_loss("classification", LOGITS, LABELS, label_smoothing=0.3).item() == pytest.approx(SMOOTHED, abs=1e-6)
    plain = (math.log(2.0) + math.log(3.0)) / 2
    assert task_loss("classification", LOGITS, LABELS).item() == pytest.approx(plain, abs=1e-6)
    assert task_loss("classification", LOGITS, torch.tensor([-1, -1, -1]), label_smoothing=0.3).item() == 0.0


def test_the_spec_smooths_the_task_loss_of_all_three_networks() -> None:
    spec = spec_of(label_smoothing=0.3)
    objective = OBJECTIVES.get("student_only")(spec, repr_dim=2, n_train=3)
    fwd = Forward(z={}, out=dict.fromkeys(("student", "teacher", "auxiliary"), LOGITS), target={})
    terms = objective.losses(None, Batch({}, LABELS, torch.arange(3)), fwd, epoch=0)  # type: ignore[arg-type]
    assert {name: round(value.item(), 6) for name, value in terms.items()} == {
        "task_student": round(SMOOTHED, 6),
        "task_teacher": round(SMOOTHED, 6),
        "task_auxiliary": round(SMOOTHED, 6),
    }


@pytest.mark.parametrize(
    ("field", "value"), [("label_smoothing", 0.5), ("label_smoothing", -0.1), ("select", "best"), ("select", None)]
)
def test_recipe_fields_refuse_values_out_of_range(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=f"train.{field}"):
        spec_of(**{field: value})


def test_recipe_fields_at_their_neutral_values_leave_the_hash_unchanged() -> None:
    plain = spec_of().spec_hash()
    assert spec_of(label_smoothing=0.0, select="last").spec_hash() == plain
    assert spec_of(label_smoothing=0.1).spec_hash() != plain
    assert spec_of(select="best_val").spec_hash() != plain


def test_selection_follows_the_primary_metrics_direction_and_ties_go_later() -> None:
    regression = spec_of().model_copy(update={"task": "regression", "train": spec_of(select="best_val").train})
    selection, net = EpochSelection(regression), nn.Linear(1, 1)
    for epoch, mae in enumerate([0.5, 0.3, float("nan"), 0.4, 0.3], start=1):
        with torch.no_grad():
            net.weight.fill_(epoch)
        selection.offer(epoch, {"student/mae": mae}, net)
    assert (selection.epoch, selection.value) == (5, 0.3)
    with torch.no_grad():
        net.weight.fill_(-1.0)
    assert selection.apply(net, last_epoch=5) == 5 and net.weight.item() == 5.0


def test_best_val_tests_and_exports_the_weights_of_the_best_validation_epoch(tmp_path: Path) -> None:
    from core.data import prepare
    from core.engine.export import predict_file
    from core.engine.setup import build_run
    from core.engine.trainer import evaluate

    spec = spec_of(select="best_val", **PEAKING)
    recorder = ValidationRecorder()
    store = LocalCheckpointStore(tmp_path / "ck", keep_last=10)
    summary = train(spec, workdir=tmp_path / "run", checkpoints=store, tracker=recorder)
    best = max(recorder.accuracy)
    assert recorder.accuracy[-1] < best  # the run is one where the choice matters
    assert summary["selected_epoch"] == 1 + max(i for i, value in enumerate(recorder.accuracy) if value == best)
    assert summary["validation"]["student"]["accuracy"] == best

    run = build_run(spec, prepare(spec.dataset, spec.task))
    run.nets.load_state_dict(checkpoint_nets(tmp_path / "ck", summary["selected_epoch"]))
    assert evaluate(run, "test")["student/accuracy"] == summary["student"]["accuracy"]
    raw = np.load(Path(__file__).resolve().parents[2] / "core/data/builtin/mfeat.npz")
    rows = run.data.test.indices
    np.savez(tmp_path / "primary.npz", fou=raw["fou"][rows], mor=raw["mor"][rows])
    predicted = predict_file(tmp_path / "run" / "student", tmp_path / "primary.npz")["prediction"]
    assert float((predicted == raw["label"][rows]).mean()) == pytest.approx(summary["student"]["accuracy"], abs=1e-9)


def test_a_resumed_run_selects_the_epoch_chosen_before_the_interruption(tmp_path: Path) -> None:
    from core.data import prepare
    from core.engine.setup import build_run
    from core.engine.trainer import epoch_batches

    spec = spec_of(select="best_val", **PEAKING)
    straight = train(spec, workdir=tmp_path / "a")
    assert straight["selected_epoch"] == 5
    steps_per_epoch = len(epoch_batches(build_run(spec, prepare(spec.dataset, spec.task)), 0))
    store = LocalCheckpointStore(tmp_path / "b" / "ck")
    with pytest.raises(TrainingCancelled):  # stopped in epoch 6, after epoch 5's checkpoint
        train(spec, workdir=tmp_path / "b", checkpoints=store, tracker=ValidationRecorder(5 * steps_per_epoch + 1))
    resumed = train(spec, workdir=tmp_path / "b", checkpoints=store)
    assert resumed["resumed_from_step"] == 5 * steps_per_epoch
    assert resumed["selected_epoch"] == 5
    assert resumed["student"] == straight["student"] and resumed["teacher"] == straight["teacher"]


def test_last_exports_the_final_weights_and_selection_does_not_change_training(tmp_path: Path) -> None:
    from core.data import prepare
    from core.engine.setup import build_run
    from core.engine.trainer import evaluate

    runs = {}
    for select in ("last", "best_val"):
        store = LocalCheckpointStore(tmp_path / select / "ck", keep_last=10)
        runs[select] = train(spec_of(select=select, **PEAKING), workdir=tmp_path / select, checkpoints=store)
    assert runs["last"]["selected_epoch"] == 6 and runs["best_val"]["selected_epoch"] == 5
    final = {select: checkpoint_nets(tmp_path / select / "ck", 6) for select in runs}
    assert all(torch.equal(final["last"][key], final["best_val"][key]) for key in final["last"])
    spec = spec_of(select="last", **PEAKING)
    run = build_run(spec, prepare(spec.dataset, spec.task))
    run.nets.load_state_dict(final["last"])
    assert evaluate(run, "test")["student/accuracy"] == runs["last"]["student"]["accuracy"]
    assert runs["last"]["student"] != runs["best_val"]["student"]
