"""Warnings during a run (core.engine.health): the detector on synthetic validation sequences, then one
real run whose teacher weakens under a strong I(T;S) term, uninterrupted and resumed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from core.engine import checkpoint as ckpt
from core.engine.checkpoint import LocalCheckpointStore
from core.engine.health import RunHealth, RunWarning
from core.engine.tracking_local import FanOutTracker, MetricsFileTracker, RichProgressTracker
from core.engine.trainer import train
from core.errors import TrainingCancelled
from core.objectives import OBJECTIVES
from core.spec import JobSpec
from core.tracking import NullTracker

JOINT = ("student", "teacher", "auxiliary")


def feed(
    health: RunHealth, teacher: list[float], *, warmup: int, student: list[float] | None = None
) -> list[RunWarning]:
    """Joint training: all three networks train; distillation acts from epoch ``warmup + 1`` (1-based)."""
    fired = []
    for index, value in enumerate(teacher):
        metrics = {f"teacher/{health.metric}": value, f"student/{health.metric}": (student or teacher)[index]}
        fired += health.observe(index + 1, metrics, training=JOINT, distilling=index >= warmup)
    return fired


#: A teacher that settles at 0.95-0.96 in a 7-epoch warm-up, then falls once distillation acts (epoch 8 on).
TEACHER_DROP = [0.80, 0.90, 0.95, 0.96, 0.95, 0.96, 0.95, 0.85, 0.84, 0.83, 0.80]


def test_a_teacher_that_drops_after_warm_up_fires_once_with_its_numbers() -> None:
    health = RunHealth("accuracy")
    student = [0.70, 0.75, 0.78, 0.80, 0.81, 0.82, 0.82, 0.83, 0.83, 0.84, 0.84]
    fired = feed(health, TEACHER_DROP, warmup=7, student=student)
    assert [w.kind for w in fired] == ["weak_teacher"]  # once, though it keeps falling
    warning = fired[0]
    # The second evaluation in a row below at epoch 9. Changes so far: 0.10, 0.05, then 0.01 five times, 0.10,
    # 0.01: median 0.01, so the threshold is max(0.02, 3 x 0.01).
    assert (warning.network, warning.metric, warning.best, warning.best_epoch) == ("teacher", "accuracy", 0.96, 4)
    assert (warning.value, warning.epoch) == (0.84, 9)
    assert warning.threshold == pytest.approx(0.03)
    assert "0.8400 at epoch 9" in warning.message and "best 0.9600 (epoch 4)" in warning.message
    assert "\n" not in warning.message
    assert health.warnings == fired


def test_noise_within_the_threshold_does_not_fire() -> None:
    health = RunHealth("accuracy")
    # Epoch-to-epoch swings of 3-5 points: the threshold is 3 x 0.04; dips of 6 points are noise.
    teacher = [0.90, 0.94, 0.90, 0.93, 0.89, 0.93, 0.88, 0.88, 0.92, 0.89]
    assert feed(health, teacher, warmup=2) == []


def test_one_bad_evaluation_alone_does_not_fire() -> None:
    health = RunHealth("accuracy")
    assert feed(health, [0.90, 0.91, 0.91, 0.70, 0.91, 0.70, 0.91], warmup=2) == []


def test_a_drop_before_the_distillation_terms_start_does_not_fire() -> None:
    health = RunHealth("accuracy")
    teacher = [0.90, 0.91, 0.70, 0.70, 0.70, 0.90, 0.91, 0.91]
    assert feed(health, teacher, warmup=5) == []
    assert health.below["weak_teacher"] == 0


def test_a_student_below_its_own_earlier_level_while_distilling_fires_student_regressed() -> None:
    """Frozen-teacher KD: phase 1 (3 epochs) trains the teacher while the student idles; phase 2 freezes
    the teacher and trains the student. Neither the idle student nor the frozen teacher is judged."""
    health = RunHealth("accuracy")
    fired = []
    for epoch in (1, 2, 3):  # whatever the idle student scores is no reference
        metrics = {"teacher/accuracy": 0.5 + 0.1 * epoch, "student/accuracy": 0.95}
        fired += health.observe(epoch, metrics, training=("teacher", "auxiliary"), distilling=False)
    phase_2 = [0.60, 0.85, 0.90, 0.89, 0.90, 0.89, 0.90, 0.70, 0.62, 0.60]
    for epoch, value in enumerate(phase_2, start=4):
        metrics = {"teacher/accuracy": 0.3, "student/accuracy": value}
        fired += health.observe(epoch, metrics, training=("student",), distilling=True)
    assert [(w.kind, w.network, w.best, w.best_epoch, w.value, w.epoch) for w in fired] == [
        ("student_regressed", "student", 0.90, 6, 0.62, 12)
    ]


def test_the_direction_follows_the_metric() -> None:
    """Regression's mae: a growing error fires; a shrinking one does not, though as an accuracy it would."""
    settled = [0.80, 0.60, 0.50, 0.49, 0.50, 0.49, 0.50, 0.49]
    growing, shrinking = [*settled, 0.60, 0.65, 0.66], [*settled, 0.38, 0.33, 0.32]
    fired = feed(RunHealth("mae"), growing, warmup=5, student=[0.9] * len(growing))
    assert [(w.kind, w.best, w.best_epoch, w.value, w.epoch) for w in fired] == [("weak_teacher", 0.49, 4, 0.65, 10)]
    assert feed(RunHealth("mae"), shrinking, warmup=5, student=[0.9] * len(shrinking)) == []
    as_accuracy = feed(RunHealth("accuracy"), shrinking, warmup=5, student=[0.9] * len(shrinking))
    assert [w.kind for w in as_accuracy] == ["weak_teacher"]


def test_the_state_survives_a_checkpoint_round_trip() -> None:
    straight = RunHealth("accuracy")
    feed(straight, TEACHER_DROP, warmup=7)
    first = RunHealth("accuracy")
    feed(first, TEACHER_DROP[:8], warmup=7)  # one evaluation below so far
    resumed = RunHealth("accuracy")
    resumed.load_state_dict(ckpt.from_bytes(ckpt.to_bytes({"health": first.state_dict()}))["health"])
    fired = []
    for epoch, value in enumerate(TEACHER_DROP[8:], start=9):
        metrics = {"teacher/accuracy": value, "student/accuracy": value}
        fired += resumed.observe(epoch, metrics, training=JOINT, distilling=True)
    assert fired == straight.warnings != [] and resumed.state_dict() == straight.state_dict()
    empty = RunHealth("accuracy")
    empty.load_state_dict(None)  # a checkpoint from before the warnings existed
    assert empty.state_dict() == RunHealth("accuracy").state_dict()


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ({"name": "student_only"}, {"student": [False] * 4, "teacher": [False] * 4}),
        (
            {"name": "mi_joint", "warmup_epochs": 2},
            {"student": [False, False, True, True], "teacher": [False, False, True, True]},
        ),
        (
            {"name": "paper", "warmup_epochs": 1},
            {"student": [False, True, True, True], "teacher": [False, True, True, True]},
        ),
        ({"name": "logit_kd", "teacher_epochs": 2}, {"student": [False, False, True, True], "teacher": [False] * 4}),
        ({"name": "crd", "teacher_epochs": 1}, {"student": [False, True, True, True], "teacher": [False] * 4}),
    ],
)
def test_which_network_each_method_has_watched(method: dict[str, Any], expected: dict[str, list[bool]]) -> None:
    """The weak-teacher check applies while a jointly trained teacher distils; never to a frozen teacher
    (frozen-teacher methods) nor to a method without distillation terms (student_only)."""
    spec = JobSpec.model_validate({**WEAK_TEACHER_SPEC, "method": method, "train": {"epochs": 2}})
    objective = OBJECTIVES.get(spec.method.name)(spec, repr_dim=8, n_train=10)
    epochs = range(4)
    for network, flags in expected.items():
        watched = [objective.distilling(e) and objective.roles(e)[network] == "train" for e in epochs]
        assert watched == flags, network


# A recipe that weakens the teacher reliably and fast (seconds on CPU): mi_joint with alpha 100 after a
# 3-epoch warm-up at lr 1e-2. The teacher reaches ~0.95 in warm-up and settles near 0.82 once I(T;S) acts.
WEAK_TEACHER_SPEC: dict[str, Any] = {
    "name": "weak",
    "dataset": {"name": "mfeat", "primary": ["fou", "mor"], "auxiliary": ["kar"]},
    "model": {"hidden_dim": 32, "repr_dim": 8, "dropout": 0.1},
    "method": {"name": "mi_joint", "alpha": 100.0, "warmup_epochs": 3},
    "train": {"epochs": 12, "batch_size": 32, "lr": 0.01, "seed": 0, "device": "cpu"},
    "checkpoint": {"every_epochs": 1},
}


class WarningRecorder(NullTracker):
    """Records warnings; stops training once one was seen and a step passed, when told to."""

    def __init__(self, stop_after_warning: bool = False) -> None:
        self.warnings: list[tuple[str, str, dict[str, Any]]] = []
        self.stop_after_warning = stop_after_warning
        self.steps_since_warning = 0

    def on_step(self, *, epoch: int, step: int, losses: Mapping[str, float]) -> None:
        self.steps_since_warning += bool(self.warnings)

    def on_warning(self, *, kind: str, message: str, data: Mapping[str, Any]) -> None:
        self.warnings.append((kind, message, dict(data)))

    def should_stop(self) -> bool:
        return self.stop_after_warning and self.steps_since_warning > 0


def test_a_real_run_with_a_weakening_teacher_warns_in_the_tracker_and_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = WarningRecorder()
    with RichProgressTracker("accuracy") as bar, MetricsFileTracker(tmp_path / "metrics.jsonl") as record:
        summary = train(
            JobSpec.model_validate(WEAK_TEACHER_SPEC), workdir=tmp_path, tracker=FanOutTracker(record, bar, recorder)
        )
    assert [kind for kind, _, _ in recorder.warnings] == ["weak_teacher"]
    kind, message, data = recorder.warnings[0]
    assert data["network"] == "teacher" and data["epoch"] > data["best_epoch"] >= 1
    assert data["best"] - data["value"] > data["threshold"] >= 0.02
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["warnings"] == summary["warnings"] == [{"kind": kind, "message": message, **data}]
    printed = [line for line in capsys.readouterr().out.splitlines() if "weak teacher" in line]
    assert printed == [f"warning {message}"]


def test_the_warning_survives_a_resume(tmp_path: Path) -> None:
    spec = JobSpec.model_validate(WEAK_TEACHER_SPEC)
    first = WarningRecorder(stop_after_warning=True)
    store = LocalCheckpointStore(tmp_path / "b" / "ck")
    with pytest.raises(TrainingCancelled):
        train(spec, workdir=tmp_path / "b", checkpoints=store, tracker=first)
    assert [kind for kind, _, _ in first.warnings] == ["weak_teacher"]
    second = WarningRecorder()
    resumed = train(spec, workdir=tmp_path / "b", checkpoints=store, tracker=second)
    assert resumed["resumed_from_step"] > 0
    assert second.warnings == []  # given before the checkpoint: not given again
    given = [{"kind": kind, "message": message, **data} for kind, message, data in first.warnings]
    assert resumed["warnings"] == given != []  # but kept in the resumed run's summary
