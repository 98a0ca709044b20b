"""`mmkd train`, `mmkd predict`, `mmkd datasets builtin` as a user runs them: real processes, exit codes, files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from core.metrics import from_jsonl

ROOT = Path(__file__).resolve().parents[2]
MMKD = str(Path(sys.executable).with_name("mmkd"))
SPEC = """
name: cli-test
dataset: {name: basic_motions, primary: [accelerometer], auxiliary: [gyroscope]}
model: {hidden_dim: 8, repr_dim: 8}
method: {name: paper}
train: {epochs: 2, batch_size: 16}
checkpoint: {every_epochs: 1}
"""


def mmkd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MMKD, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_train_then_predict_from_primary_modalities_only(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    out = tmp_path / "run"
    result = mmkd("train", str(tmp_path / "spec.yaml"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "paper" and summary["dataset"] == "basic_motions"
    assert set(summary) >= {"student", "teacher", "auxiliary"} and "accuracy" in summary["student"]
    points = from_jsonl((out / "metrics.jsonl").read_text())
    assert [p.step for p in points if p.name == "train/total"] == [1, 2, 3, 4]
    assert [p.step for p in points if p.name == "val/student/accuracy"] == [2, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2.pt", "step-4.pt"]

    raw = np.load(ROOT / "core/data/builtin/basic_motions.npz")
    np.savez(tmp_path / "primary.npz", accelerometer=raw["accelerometer"][:5])
    result = mmkd("predict", str(out / "student"), str(tmp_path / "primary.npz"), "--out", str(tmp_path / "p.npz"))
    assert result.returncode == 0, result.stderr
    predictions = np.load(tmp_path / "p.npz")
    assert predictions["prediction"].shape == (5,) and predictions["scores"].shape == (5, 4)
    assert set(predictions["class_name"]) <= {"Standing", "Running", "Walking", "Badminton"}

    # A finished run is never touched again: a second train and a --resume into it are both refused.
    again = mmkd("train", str(tmp_path / "spec.yaml"), "--out", str(out))
    assert again.returncode == 1 and f"{out} already exists" in again.stderr
    resumed = mmkd("train", str(tmp_path / "spec.yaml"), "--out", str(out), "--resume")
    assert resumed.returncode == 1 and "there is nothing to resume" in resumed.stderr
    assert json.loads((out / "summary.json").read_text()) == summary
    assert from_jsonl((out / "metrics.jsonl").read_text()) == points
    assert not out.with_name("run.partial").exists()


def test_user_mistakes_give_one_line_and_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(SPEC.replace("name: paper", "name: paper, gama: 1"))
    cases = [
        (["train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")], "missing.yaml: no such file"),
        (["train", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")], "method.paper.gama: Extra inputs"),
        (["predict", str(tmp_path), str(tmp_path / "x.npz"), "--out", "p.npz"], "not an exported student"),
    ]
    for args, message in cases:
        result = mmkd(*args)
        assert result.returncode == 1, args
        assert message in result.stderr and "Traceback" not in result.stderr


def test_predict_names_the_missing_modality(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC.replace("epochs: 2", "epochs: 1"))
    assert mmkd("train", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "run")).returncode == 0
    np.savez(tmp_path / "wrong.npz", gyroscope=np.zeros((2, 3, 100), dtype=np.float32))
    result = mmkd("predict", str(tmp_path / "run/student"), str(tmp_path / "wrong.npz"), "--out", "p.npz")
    assert result.returncode == 1
    assert "wrong.npz: primary modality 'accelerometer' is missing" in result.stderr


def test_datasets_lists_the_builtins() -> None:
    result = mmkd("datasets", "builtin")
    assert result.returncode == 0
    assert "mfeat" in result.stdout and "basic_motions" in result.stdout and "accelerometer" in result.stdout


def test_train_with_a_reference_prints_the_gain(tmp_path: Path) -> None:
    """`reference` in a spec: the local run trains student_only after the method and prints the gain."""
    (tmp_path / "spec.yaml").write_text(SPEC.replace("checkpoint:", "reference: {resamples: 100}\ncheckpoint:"))
    out = tmp_path / "run"
    result = mmkd("train", str(tmp_path / "spec.yaml"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    gain = json.loads((out / "summary.json").read_text())["gain"]
    expected = (
        f"against student_only on the same split: test accuracy {gain['student']:.4f} vs {gain['reference']:.4f}, "
        f"gain {gain['value']:+.4f} [95% paired bootstrap: {gain['low']:+.4f}, {gain['high']:+.4f}]"
    )
    assert expected in " ".join(result.stdout.split())


def test_train_on_two_processes_writes_the_same_run_folder(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC + "resources: {procs_per_node: 2}\n")
    out = tmp_path / "run"
    result = mmkd("train", str(tmp_path / "spec.yaml"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "training on 2 processes (torchrun, cpu)" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["world_size"], summary["launcher"]) == (2, "torchrun")
    points = from_jsonl((out / "metrics.jsonl").read_text())
    assert [p.step for p in points if p.name == "train/total"] == [1, 2, 3, 4]  # rank 0 alone records
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2.pt", "step-4.pt"]
    assert (out / "student" / "model.json").exists() and not out.with_name("run.partial").exists()


def test_several_hosts_are_refused_locally_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC + "resources: {nodes: 2}\n")
    result = mmkd("train", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "run"))
    assert result.returncode == 1 and "resources.nodes 2: several hosts run on a Ray cluster" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run.partial").exists()
