"""The reference inside a job (issue 9, item 3): the paired bootstrap by hand, and a job with a
``reference`` whose reference is exactly the student_only run of the same spec and seed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.engine.evaluation import paired_bootstrap
from core.engine.trainer import train
from core.errors import TrainingCancelled
from core.spec import JobSpec
from core.tracking import NullTracker


def one_hot(predicted: list[int], classes: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predicted), classes).float()


def test_the_gain_and_its_interval_by_hand() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    student = one_hot([0, 1, 2, 0, 1, 2, 0, 1, 0, 1])  # 8 of 10 right
    reference = one_hot([0, 1, 2, 0, 2, 0, 1, 1, 0, 1])  # 5 of 10 right
    found = paired_bootstrap("classification", "accuracy", student, reference, labels, resamples=2000, seed=3)
    assert (found["student"], found["reference"], found["value"]) == (0.8, 0.5, pytest.approx(0.3))
    assert found["low"] < 0.3 < found["high"] and found["low"] >= -0.1 and found["high"] <= 0.7
    # The student is never worse on a sample: no resample can show a loss.
    assert found["low"] >= 0.0
    again = paired_bootstrap("classification", "accuracy", student, reference, labels, resamples=2000, seed=3)
    assert again == found  # seeded


def test_identical_students_gain_nothing_on_every_resample() -> None:
    """Paired: the same rows for both students, so equal outputs give a zero-width interval at 0."""
    labels = np.array([0, 1, 2, 2, 1])
    outputs = one_hot([0, 2, 2, 1, 1])
    found = paired_bootstrap("classification", "macro_f1", outputs, outputs.clone(), labels, resamples=200, seed=0)
    assert (found["value"], found["low"], found["high"]) == (0.0, 0.0, 0.0)


def test_an_error_metric_counts_a_smaller_error_as_a_gain() -> None:
    targets = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
    student = torch.tensor([[1.1], [2.1], [2.9], [4.1]])  # mae 0.1
    reference = torch.tensor([[1.5], [2.5], [2.5], [4.5]])  # mae 0.5
    found = paired_bootstrap("regression", "mae", student, reference, targets, resamples=500, seed=1)
    assert found["value"] == pytest.approx(0.4) and found["low"] > 0.0
    assert found["student"] == pytest.approx(0.1) and found["reference"] == pytest.approx(0.5)


def test_multilabel_resamples_without_a_positive_are_drawn_but_not_counted() -> None:
    """One positive label in 20 samples: about a third of the resamples hold none and have no mean AP."""
    labels = np.zeros((20, 2), dtype=np.float32)
    labels[3, 0] = 1.0
    student = torch.zeros(20, 2)
    student[3, 0] = 5.0
    found = paired_bootstrap("multilabel", "mean_ap", student, torch.zeros(20, 2), labels, resamples=300, seed=2)
    assert 100 < found["resamples"] < 300 and found["low"] <= found["value"] <= found["high"]


def test_the_check_runs_every_hundred_resamples_and_can_stop_the_bootstrap() -> None:
    labels = np.array([0, 1, 0, 1])
    calls: list[int] = []
    paired_bootstrap(
        "classification",
        "accuracy",
        one_hot([0, 1, 0, 0], 2),
        one_hot([0, 0, 0, 0], 2),
        labels,
        resamples=250,
        seed=0,
        check=lambda: calls.append(1),
    )
    assert len(calls) == 3  # before resamples 0, 100 and 200

    def stop() -> None:
        raise TrainingCancelled(7)

    with pytest.raises(TrainingCancelled):
        paired_bootstrap(
            "classification",
            "accuracy",
            one_hot([0, 1], 2),
            one_hot([0, 0], 2),
            labels[:2],
            resamples=10,
            seed=0,
            check=stop,
        )


def spec_of(method: dict[str, Any], **top: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "ref",
            "dataset": {"name": "mfeat", "primary": ["fou", "mor"], "auxiliary": ["kar"], "label_fraction": 0.5},
            "model": {"hidden_dim": 16, "repr_dim": 8},
            "method": method,
            "train": {"epochs": 2, "batch_size": 256, "seed": 4},
            "checkpoint": {"every_epochs": None},
            **top,
        }
    )


def test_a_job_with_a_reference_reports_the_gain_over_the_same_student_only_run(tmp_path: Path) -> None:
    method = {"name": "logit_kd", "teacher_epochs": 1}
    summary = train(spec_of(method, reference={"resamples": 200}), workdir=tmp_path / "job")
    alone = train(spec_of({"name": "student_only"}), workdir=tmp_path / "alone")
    plain = train(spec_of(method), workdir=tmp_path / "plain")
    gain = summary["gain"]
    assert gain["reference_method"] == "student_only" and gain["metric"] == "accuracy"
    assert gain["reference"] == alone["student"]["accuracy"]  # the same run: same split, seed and model
    assert gain["student"] == summary["student"]["accuracy"] == plain["student"]["accuracy"]
    assert gain["value"] == pytest.approx(gain["student"] - gain["reference"])
    assert gain["low"] <= gain["value"] <= gain["high"] and gain["resamples"] == 200
    assert gain["test_samples"] == summary["data"]["sizes"]["test"]
    assert "gain" not in plain


class StopInReference(NullTracker):
    """Asks to stop at the reference's third step boundary, never before the reference starts."""

    def __init__(self) -> None:
        self.in_reference = False
        self.asked = 0

    def busy(self, what: str) -> AbstractContextManager[None]:
        self.in_reference = self.in_reference or what.startswith("reference")
        return nullcontext()

    def should_stop(self) -> bool:
        if self.in_reference:
            self.asked += 1
        return self.asked > 2


def test_a_cancel_reaches_the_reference_training(tmp_path: Path) -> None:
    tracker = StopInReference()
    with pytest.raises(TrainingCancelled, match="cancelled at step 2"):
        train(spec_of({"name": "student_only"}, reference={}), workdir=tmp_path, tracker=tracker)
    assert tracker.asked == 3
    assert not (tmp_path / "summary.json").exists()


def test_the_spec_refuses_a_reference_for_retrieval_and_probes_and_leaves_hashes_alone() -> None:
    plain = spec_of({"name": "student_only"})
    assert spec_of({"name": "student_only"}, reference=None).spec_hash() == plain.spec_hash()
    assert spec_of({"name": "student_only"}, reference={}).spec_hash() != plain.spec_hash()
    with pytest.raises(ValueError, match="not for task retrieval or kind probe"):
        spec_of({"name": "student_only"}, reference={}, kind="probe")
    with pytest.raises(ValueError, match="resamples"):
        spec_of({"name": "student_only"}, reference={"resamples": 10})


class BusyRecorder(NullTracker):
    """Records how many busy stretches are open whenever the loop asks whether to stop, and each stretch."""

    def __init__(self) -> None:
        self.open = 0
        self.open_at_steps: list[int] = []
        self.stretches: list[str] = []

    @contextmanager
    def _stretch(self, what: str) -> Iterator[None]:
        self.open += 1
        self.stretches.append(what)
        try:
            yield
        finally:
            self.open -= 1

    def busy(self, what: str) -> AbstractContextManager[None]:
        return self._stretch(what)

    def should_stop(self) -> bool:
        self.open_at_steps.append(self.open)
        return False


def test_the_reference_steps_are_progress_not_one_long_busy_stretch(tmp_path: Path) -> None:
    """A worker fails a job whose busy stretch outlasts MMKD_BUSY_SECONDS: the reference's training must
    show progress at every step, never sit inside one stretch."""
    tracker = BusyRecorder()
    summary = train(spec_of({"name": "student_only"}, reference={"resamples": 100}), workdir=tmp_path, tracker=tracker)
    assert set(tracker.open_at_steps) == {0}  # no stretch open while a step runs, the reference's included
    steps = summary["steps"]
    assert tracker.stretches.count("reference: step") == steps  # the reference has the job's schedule
    assert "reference: setup" in tracker.stretches and "reference: paired bootstrap" in tracker.stretches
