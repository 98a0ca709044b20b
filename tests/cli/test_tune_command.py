"""`mmkd tune SPEC STUDY` as a user runs it: a real process, the study's folder and its record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[2]
MMKD = str(Path(sys.executable).with_name("mmkd"))
BASE = """
name: kd
dataset: {name: mfeat, primary: [fou, zer], auxiliary: [kar]}
model: {hidden_dim: 16, repr_dim: 8}
method: {name: logit_kd, teacher_epochs: 2}
train: {epochs: 3, batch_size: 64, device: cpu}
checkpoint: {every_epochs: null}
"""
#: Three learning rates that learn, then one that cannot: the median pruner stops the fourth trial.
STUDY = """
name: lr
space:
  - {path: train.lr, type: categorical, choices: [0.01, 0.003, 0.03, 0.000001]}
initial: [{train.lr: 0.01}, {train.lr: 0.003}, {train.lr: 0.03}, {train.lr: 0.000001}]
trials: 4
pruner: {name: median, startup_trials: 3, warmup_epochs: 1}
reference: {resamples: 200}
"""


def mmkd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MMKD, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_tune_searches_prunes_and_trains_the_winner_with_its_reference(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "study.yaml").write_text(STUDY)
    out = tmp_path / "tuned"
    result = mmkd("tune", str(tmp_path / "base.yaml"), str(tmp_path / "study.yaml"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "study.json").read_text())
    assert record["trials"] == {"complete": 3, "pruned": 1}
    study = optuna.load_study(study_name="lr", storage=f"sqlite:///{out / 'optuna.db'}")
    states = [trial.state.name for trial in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    assert sorted(study.trials[3].intermediate_values) == [1, 2]  # the student's epochs 1 and 2
    scores = {trial.number: trial.value for trial in study.trials[:3]}
    best = max(scores, key=lambda number: scores[number])
    assert record["winner"] == {"trial": best, "values": study.trials[best].params, "validation": scores[best]}
    summaries = {n: json.loads((out / f"trial-{n}-s0" / "summary.json").read_text()) for n in range(3)}
    for number, summary in summaries.items():
        assert summary["validation"]["student"]["accuracy"] == scores[number]
    assert not (out / "trial-3-s0" / "summary.json").exists()  # pruned: it never finished
    final = json.loads((out / "final-s0" / "summary.json").read_text())
    assert final["student"] == summaries[best]["student"]  # the winner again, bit for bit
    assert record["test"] == final["student"]["accuracy"]
    assert record["gain"] == {**final["gain"], "over": "test_samples"} and record["gain"]["resamples"] == 200
    assert (out / "final-s0" / "student").is_dir()
    assert "pruned by the study's median pruner after epoch 2" in result.stdout
    assert f"gain {record['gain']['value']:+.4f}" in " ".join(result.stdout.split())


def test_tune_refuses_a_study_with_its_own_base_and_an_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "study.yaml").write_text(STUDY + "base: {}\n")
    refused = mmkd("tune", str(tmp_path / "base.yaml"), str(tmp_path / "study.yaml"), "--out", str(tmp_path / "o"))
    assert refused.returncode == 1 and "has a base; with mmkd tune, SPEC is the base" in refused.stderr
    (tmp_path / "study.yaml").write_text(STUDY.replace("trials: 4", "trials: 0"))
    bad = mmkd("tune", str(tmp_path / "base.yaml"), str(tmp_path / "study.yaml"), "--out", str(tmp_path / "o"))
    assert bad.returncode == 1 and "study.yaml: invalid study: trials: Input should be greater than or equal to 1" in (
        " ".join(bad.stderr.split())
    ), bad.stderr
    (tmp_path / "study.yaml").write_text(STUDY)
    (tmp_path / "exists").mkdir()
    taken = mmkd("tune", str(tmp_path / "base.yaml"), str(tmp_path / "study.yaml"), "--out", str(tmp_path / "exists"))
    assert taken.returncode == 1 and "exists; --out names a folder to create" in taken.stderr
    assert not (tmp_path / "o").exists()


def test_tune_fails_a_trial_whose_values_make_no_valid_job_and_goes_on(tmp_path: Path) -> None:
    """Each value is valid alone (the study is accepted) but together they pass mst_distill's attention
    bound: the trial fails, as on the service, and the tune ends with no trial completed."""
    (tmp_path / "base.yaml").write_text(BASE.replace("{name: logit_kd, teacher_epochs: 2}", "{name: mst_distill}"))
    (tmp_path / "study.yaml").write_text(
        "name: big\nspace:\n"
        "  - {path: train.batch_size, type: categorical, choices: [4096]}\n"
        "  - {path: model.repr_dim, type: categorical, choices: [512]}\n"
        "trials: 2\n"
    )
    out = tmp_path / "tuned"
    result = mmkd("tune", str(tmp_path / "base.yaml"), str(tmp_path / "study.yaml"), "--out", str(out))
    assert result.returncode == 1 and "no trial completed ({'fail': 2})" in result.stderr, result.stderr
    assert " ".join(result.stdout.split()).count("failed: (spec): Value error, method mst_distill attends") == 2
    study = optuna.load_study(study_name="big", storage=f"sqlite:///{out / 'optuna.db'}")
    assert [trial.state.name for trial in study.trials] == ["FAIL", "FAIL"]
