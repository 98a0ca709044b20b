"""The README tour as a user runs it: ``mmkd train`` on mfeat, ``mmkd datasets export`` of the test
split, ``mmkd predict`` on that file; the student's predictions on it score what summary.json says,
so the export is the split training used. And the export's refusals, one line each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from core.data import prepare
from core.spec import DatasetSpec, load_spec

ROOT = Path(__file__).resolve().parents[2]
MMKD = str(Path(sys.executable).with_name("mmkd"))


def mmkd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MMKD, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_tour_trains_exports_the_test_split_and_predicts_on_it(tmp_path: Path) -> None:
    """The tour's commands, with the example spec made small (one epoch) so it runs in seconds."""
    spec = yaml.safe_load((ROOT / "examples/mfeat-paper.yaml").read_text())
    spec["model"] = {**spec["model"], "hidden_dim": 16, "repr_dim": 8}
    spec["train"] = {**spec["train"], "epochs": 1, "batch_size": 256}
    spec["dataset"] = {
        **spec["dataset"],
        "test_fraction": 0.3,
        "split_seed": 4,
    }  # not the defaults: --like carries them
    (tmp_path / "mfeat.yaml").write_text(yaml.safe_dump(spec))
    trained = mmkd("train", "mfeat.yaml", "--out", "runs/mfeat", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr

    exported = mmkd(
        "datasets", "export", "--like", "runs/mfeat/student", "--split", "test", "--out", "primary.npz", cwd=tmp_path
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.strip() == (
        "600 samples of the test split (seeded stratified split (split_seed=4)) written to primary.npz: "
        "fou, zer, mor, label"
    )
    predicted = mmkd("predict", "runs/mfeat/student", "primary.npz", "--out", "preds.npz", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr

    with np.load(tmp_path / "primary.npz") as primary, np.load(tmp_path / "preds.npz") as preds:
        assert sorted(primary.files) == ["fou", "label", "mor", "zer"]
        accuracy = float((preds["prediction"] == primary["label"]).mean())
    summary = json.loads((tmp_path / "runs/mfeat/summary.json").read_text())
    # The trainer normalises in numpy, the program in its graph: one ulp may flip a near-tie argmax,
    # so one of the 600 samples may differ (1/600 < 1/400 < 2/600).
    assert accuracy == pytest.approx(summary["student"]["accuracy"], abs=1 / 400)


@pytest.mark.parametrize(("dataset", "split", "seed"), [("mfeat", "val", 3), ("basic_motions", "train", 0)])
def test_an_export_is_the_raw_rows_of_the_split_prepare_makes(
    tmp_path: Path, dataset: str, split: str, seed: int
) -> None:
    """The rows ``prepare`` puts in the split (the seeded one with the spec's seed, or the shipped
    one), un-normalised; ``--no-label`` leaves the classes out."""
    modality = {"mfeat": "fou", "basic_motions": "gyroscope"}[dataset]
    other = {"mfeat": "kar", "basic_motions": "accelerometer"}[dataset]
    out = tmp_path / "part"  # a bare name stays bare: np.savez would have written part.npz
    args = ["datasets", "export", dataset, "--modalities", modality, "--split", split, "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--split-seed", str(seed), "--no-label"])
    assert result.exit_code == 0, result.output
    spec = DatasetSpec(name=dataset, primary=[modality], auxiliary=[other], split_seed=seed)
    part = getattr(prepare(spec, "classification"), split)
    with np.load(out) as written, np.load(ROOT / f"core/data/builtin/{dataset}.npz") as shipped:
        assert written.files == [modality]
        assert np.array_equal(written[modality], shipped[modality][part.indices].astype(np.float32))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["part"]  # no partial file left behind


@pytest.mark.parametrize("like", ["spec", "student"])
def test_like_splits_with_the_fractions_and_seed_it_trained_with(tmp_path: Path, like: str) -> None:
    """A spec with test_fraction 0.3: the exported test rows are prepare's test rows, which the
    default fractions would not give (they would overlap the student's training rows)."""
    settings = {"name": "mfeat", "primary": ["kar", "fou"], "auxiliary": ["pix"], "test_fraction": 0.3}
    settings |= {"val_fraction": 0.1, "split_seed": 7}
    data = {"name": "t", "dataset": settings, "method": {"name": "paper"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "student").mkdir()  # model.json as the export writes it: the spec under "spec"
    (tmp_path / "student/model.json").write_text(
        json.dumps({"spec": load_spec(tmp_path / "spec.yaml").model_dump(mode="json")})
    )
    out = tmp_path / "test.npz"
    args = ["datasets", "export", "--like", str(tmp_path / like if like == "student" else tmp_path / "spec.yaml")]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    test = prepare(DatasetSpec.model_validate(settings), "classification").test
    train = prepare(DatasetSpec.model_validate(settings), "classification").train
    with np.load(out) as written, np.load(ROOT / "core/data/builtin/mfeat.npz") as shipped:
        assert written.files == ["kar", "fou", "label"]  # the student's primary modalities, then the classes
        assert np.array_equal(written["kar"], shipped["kar"][test.indices].astype(np.float32))
        assert np.array_equal(written["label"], shipped["label"][test.indices])
    assert len(test.indices) == 600 and not set(test.indices) & set(train.indices)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "error: name a built-in dataset, or give --like a student folder or spec file"),
        (["--like", "spec.yaml", "--split-seed", "3"], "error: --split-seed: --like gives the split's seed"),
        (["--like", "uri.yaml"], "error: --like: uri.yaml trains on dataset.uri, not a built-in dataset"),
        (["basic_motions", "--like", "spec.yaml"], "error: basic_motions: --like spec.yaml trains on mfeat"),
        (["--like", "missing.yaml"], "error: missing.yaml: no such file"),
        (["--like", "bad.yaml"], "error: bad.yaml: invalid spec: "),
        (["--like", "empty"], "error: --like: empty: not an exported student (no model.json) nor a spec file"),
        (["--like", "broken"], "error: broken/model.json: not a student's model.json (no valid spec in it)"),
        (["--like", "spec.yaml", "--modalities", "fou,gyroscope"], "error: --modalities: 'fou,gyroscope' must"),
    ],
)
def test_like_refusals_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    data = {
        "name": "t",
        "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["pix"]},
        "method": {"name": "paper"},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    data["dataset"] = {"uri": "/data/x.npz", "primary": ["a"], "auxiliary": ["b"]}
    (tmp_path / "uri.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "bad.yaml").write_text("name: t\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/model.json").write_text('{"spec": {"name": "t"}}')
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["datasets", "export", *args, "--out", "x.npz"])
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(message), result.stderr
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "--modalities", "fou"], "error: nope: not a built-in dataset; the built-ins are"),
        (["mfeat", "--modalities", "fou,gyroscope"], "error: --modalities: 'fou,gyroscope' must name distinct"),
        (["mfeat", "--modalities", "fou,fou"], "error: --modalities: 'fou,fou' must name distinct"),
        (["mfeat", "--modalities", "fou", "--split", "dev"], "error: --split: 'dev' is not one of train, val, test"),
    ],
)
def test_export_refusals_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["datasets", "export", *args, "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_out_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    args = ["datasets", "export", "mfeat", "--modalities", "fou", "--out", str(tmp_path / "taken")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'taken'}: cannot write (Is a directory)"]
    assert [path.name for path in tmp_path.iterdir()] == ["taken"] and not any((tmp_path / "taken").iterdir())
