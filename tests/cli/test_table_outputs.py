"""Issue 12's table, the rows about the local commands' outputs and predict's inputs, case by case:
one ``error:`` line naming the file or field, exit code 1, no traceback, and the output folders
either complete, untouched or absent (``mmkd up`` on a busy port: tests/cli/test_up_port.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from core.metrics import from_jsonl

ROOT = Path(__file__).resolve().parents[2]
MFEAT = ROOT / "core/data/builtin/mfeat.npz"
SPEC = """
name: table
dataset: {DATASET, primary: [fou, zer], auxiliary: [mor]}
model: {hidden_dim: 8, repr_dim: 8}
method: {name: paper}
train: {epochs: 2, batch_size: 256}
checkpoint: {every_epochs: 1}
"""
RUN_FILES = {"summary.json", "metrics.jsonl", "checkpoints", "student"}
STUDENT_FILES = {"model.json", "student.pt2", "weights.pt", "normalization.npz", "metrics.json"}


def mmkd(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def unwrapped(text: str) -> str:
    """``text`` without whitespace: rich wraps a long path at any character, wherever the line ends."""
    return "".join(text.split())


def spec_file(folder: Path, dataset: str = "name: mfeat", **replace: str) -> Path:
    text = SPEC.replace("DATASET", dataset)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = folder / "spec.yaml"
    path.write_text(text)
    return path


def assert_one_error(result: Result, *needles: str) -> str:
    """Exit 1, no traceback, and stderr is exactly one ``error:`` line holding every needle."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # fail(), never an escaped exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    }


def assert_complete_run(run: Path) -> None:
    assert {path.name for path in run.iterdir()} == RUN_FILES
    assert {path.name for path in (run / "student").iterdir()} == STUDENT_FILES
    assert not run.with_name(f"{run.name}.partial").exists()


def mfeat_arrays() -> dict[str, np.ndarray]:
    with np.load(MFEAT) as archive:
        return {key: archive[key] for key in archive.files}


@pytest.fixture()
def trained(tiny_run: Path) -> Path:
    """A finished run (the session's tiny mfeat student): predicted with, never to be changed."""
    return tiny_run


@pytest.fixture()
def primary(tmp_path: Path) -> Path:
    arrays = mfeat_arrays()
    path = tmp_path / "primary.npz"
    np.savez(path, fou=arrays["fou"][:7], zer=arrays["zer"][:7])
    return path


# --- mmkd train: nothing half-written, whatever fails ----------------------------------------------------------


def test_a_modality_with_no_features_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    arrays = mfeat_arrays()
    arrays["fou"] = np.zeros((len(arrays["label"]), 0), dtype=np.float32)
    np.savez(tmp_path / "empty_fou.npz", **arrays)  # type: ignore[arg-type]
    spec = spec_file(tmp_path, dataset=f"uri: {tmp_path / 'empty_fou.npz'}")
    result = mmkd("train", spec, "--out", tmp_path / "run")
    assert_one_error(result, "empty_fou.npz", "'fou'")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty_fou.npz", "spec.yaml"]


def test_any_data_error_creates_no_folder_and_no_metrics_file(tmp_path: Path) -> None:
    payload = MFEAT.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(payload[: len(payload) // 2])
    spec = spec_file(tmp_path, dataset=f"uri: {tmp_path / 'truncated.npz'}")
    result = mmkd("train", spec, "--out", tmp_path / "runs" / "run")
    assert_one_error(result, "truncated.npz")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["spec.yaml", "truncated.npz"]


def failing_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the student export fail after it wrote every file (a full disk at the last byte)."""
    import core.engine.export as export

    real = export.atomic_folder

    @contextmanager
    def write_then_fail(path: Path) -> Iterator[Path]:
        with real(path) as work:
            yield work
            raise RuntimeError("No space left on device\nand a second line")

    monkeypatch.setattr(export, "atomic_folder", write_then_fail)


def test_a_failure_after_training_keeps_only_a_resumable_partial_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, run = spec_file(tmp_path), tmp_path / "run"
    partial = tmp_path / "run.partial"
    with monkeypatch.context() as patch:
        failing_export(patch)
        line = assert_one_error(mmkd("train", spec, "--out", run), "training failed: No space left on device")
    assert f"the unfinished run is kept in {partial} (checkpoint at step 10): --resume continues it" in line
    assert not run.exists()
    assert sorted(path.name for path in partial.iterdir()) == ["checkpoints", "metrics.jsonl"]  # no student at all
    written = from_jsonl((partial / "metrics.jsonl").read_text())

    assert_one_error(mmkd("train", spec, "--out", run), f"{partial} holds an unfinished run; pass --resume")
    resumed = mmkd("train", spec, "--out", run, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert unwrapped(f"resuming {partial} from the checkpoint at step 10") in unwrapped(resumed.stdout)
    assert_complete_run(run)
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == 10
    assert from_jsonl((run / "metrics.jsonl").read_text()) == written  # each step once


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.engine.tracking_local import MetricsFileTracker

    spec, run = spec_file(tmp_path), tmp_path / "run"
    real_on_step = MetricsFileTracker.on_step

    def ctrl_c_at_step_7(self: MetricsFileTracker, *, epoch: int, step: int, losses: dict[str, float]) -> None:
        real_on_step(self, epoch=epoch, step=step, losses=losses)
        if step == 7:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(MetricsFileTracker, "on_step", ctrl_c_at_step_7)
        line = assert_one_error(mmkd("train", spec, "--out", run), "interrupted; the unfinished run is kept in")
    assert "(checkpoint at step 5)" in line and not run.exists()
    resumed = mmkd("train", spec, "--out", run, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert_complete_run(run)
    points = from_jsonl((run / "metrics.jsonl").read_text())
    assert [point.step for point in points if point.name == "train/total"] == list(range(1, 11))


def test_a_failure_before_the_first_checkpoint_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_file(tmp_path, **{"every_epochs: 1": "every_epochs: null"})
    failing_export(monkeypatch)
    line = assert_one_error(mmkd("train", spec, "--out", tmp_path / "run"), "training failed: No space left")
    assert "kept" not in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["spec.yaml"]


def test_resume_with_nothing_to_resume_is_an_error(tmp_path: Path, trained: Path) -> None:
    spec = spec_file(tmp_path)
    result = mmkd("train", spec, "--out", tmp_path / "run", "--resume")
    assert_one_error(result, f"nothing to resume: {tmp_path / 'run.partial'} does not exist")
    (tmp_path / "run.partial").mkdir()
    result = mmkd("train", spec, "--out", tmp_path / "run", "--resume")
    assert_one_error(result, f"nothing to resume: {tmp_path / 'run.partial'} holds no checkpoint")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.partial", "spec.yaml"]
    assert not any((tmp_path / "run.partial").iterdir())


def test_a_finished_run_is_never_touched_again(tmp_path: Path, trained: Path) -> None:
    before = snapshot(trained)
    spec = spec_file(tmp_path, **{"epochs: 2": "epochs: 1"})
    assert_one_error(mmkd("train", spec, "--out", trained, "--resume"), f"{trained} already exists (a finished run)")
    assert_one_error(mmkd("train", spec, "--out", trained), f"{trained} already exists; a finished run is never")
    assert snapshot(trained) == before
    assert not trained.with_name("run.partial").exists()


LOCK_HOLDER = """
import fcntl, os, sys
handle = open(sys.argv[1], "w")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.write(str(os.getpid()))
handle.flush()
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture()
def lock_held_elsewhere(tmp_path: Path) -> Iterator[int]:
    """Another process holding the run's lock (as a training ``mmkd train`` does); its pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path / ".run.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    yield holder.pid
    holder.communicate("", timeout=30)


def test_a_run_folder_in_use_is_refused_to_a_second_train_or_resume(tmp_path: Path, lock_held_elsewhere: int) -> None:
    spec, run, partial = spec_file(tmp_path), tmp_path / "run", tmp_path / "run.partial"
    message = f"{partial}: in use by pid {lock_held_elsewhere}"
    assert_one_error(mmkd("train", spec, "--out", run), message)
    assert not partial.exists() and not run.exists()
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints" / "step-5.pt").write_bytes(b"the first process's checkpoint")
    before = snapshot(partial)
    assert_one_error(mmkd("train", spec, "--out", run, "--resume"), message)
    assert snapshot(partial) == before and not run.exists()


def test_an_empty_spec_names_its_path_once(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    line = assert_one_error(mmkd("train", tmp_path / "empty.yaml", "--out", tmp_path / "run"))
    assert line.count("empty.yaml") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty.yaml"]


# --- mmkd predict: its inputs and its --out -------------------------------------------------------------------


def test_predict_writes_exactly_the_out_path_it_names(tmp_path: Path, trained: Path, primary: Path) -> None:
    out = tmp_path / "new" / "predictions"  # no .npz, in a folder that does not exist yet
    result = mmkd("predict", trained / "student", primary, "--out", out)
    assert result.exit_code == 0, result.output
    assert unwrapped(f"7 predictions written to {out}") in unwrapped(result.stdout)
    assert sorted(path.name for path in out.parent.iterdir()) == ["predictions"]
    with np.load(out) as saved:
        assert saved["prediction"].shape == (7,) and np.isfinite(saved["scores"]).all()
        assert set(saved["class_name"]) <= {str(digit) for digit in range(10)}


def test_predict_reads_the_primary_modalities_of_a_whole_dataset_file(tmp_path: Path, trained: Path) -> None:
    out = tmp_path / "p.npz"
    result = mmkd("predict", trained / "student", MFEAT, "--out", out)  # auxiliary modalities and labels too
    assert result.exit_code == 0, result.output
    with np.load(out) as saved:
        assert saved["prediction"].shape == (2000,)


def test_predict_in_batches_matches_one_batch(trained: Path, primary: Path) -> None:
    from core.engine.export import predict_file

    whole = predict_file(trained / "student", primary)
    batched = predict_file(trained / "student", primary, batch_size=2)
    assert np.array_equal(whole["prediction"], batched["prediction"])
    np.testing.assert_allclose(whole["scores"], batched["scores"], rtol=1e-5, atol=1e-6)


def save_primary(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def huge_values(folder: Path) -> Path:
    return save_primary(folder / "data.npz", fou=np.full((4, 76), 1e300), zer=np.ones((4, 47)))


def no_samples(folder: Path) -> Path:
    return save_primary(folder / "data.npz", fou=np.zeros((0, 76), np.float32), zer=np.zeros((0, 47), np.float32))


DataCase = Callable[[Path], Path]
DATA_CASES: list[tuple[str, DataCase, str]] = [
    ("float64 of 1e300", huge_values, "data.npz: modality 'fou' has values beyond float32's range (3.4e38) in 4"),
    ("0 samples", no_samples, "data.npz: holds 0 samples"),
]


@pytest.mark.parametrize(("case", "make", "message"), DATA_CASES, ids=[case[0] for case in DATA_CASES])
def test_predict_refuses_bad_data(case: str, make: DataCase, message: str, tmp_path: Path, trained: Path) -> None:
    out = tmp_path / "p.npz"
    assert_one_error(mmkd("predict", trained / "student", make(tmp_path), "--out", out), message)
    assert not out.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["data.npz"]


def without_program(student: Path) -> None:
    (student / "student.pt2").unlink()


def corrupt_program(student: Path) -> None:
    payload = (student / "student.pt2").read_bytes()
    (student / "student.pt2").write_bytes(payload[: len(payload) // 3])


def without_card(student: Path) -> None:
    (student / "model.json").unlink()


def card_edit(edit: Callable[[dict[str, object]], object]) -> Callable[[Path], None]:
    def apply(student: Path) -> None:
        card = json.loads((student / "model.json").read_text())
        edit(card)
        (student / "model.json").write_text(json.dumps(card))

    return apply


ModelCase = Callable[[Path], object]
MODEL_CASES: list[tuple[str, ModelCase, str]] = [
    ("missing student.pt2", without_program, "student.pt2: no such file"),
    ("corrupt student.pt2", corrupt_program, "student.pt2: not a loadable torch.export program"),
    ("missing model.json", without_card, "student: not an exported student (no model.json)"),
    ("model.json not JSON", lambda s: (s / "model.json").write_text("{"), "model.json: not a student's model.json"),
    ("task of a wrong type", card_edit(lambda c: c.update(task=1)), "model.json: not a student's model.json: task:"),
    ("a shape of floats", card_edit(lambda c: c.update(modalities={"fou": [76.0]})), "modalities.fou.0:"),
    ("class names too few", card_edit(lambda c: c.update(class_names=["a", "b"])), "class_names has 2 names"),
]


@pytest.mark.parametrize(("case", "damage", "message"), MODEL_CASES, ids=[case[0] for case in MODEL_CASES])
def test_predict_refuses_a_bad_model_folder(
    case: str, damage: ModelCase, message: str, tmp_path: Path, trained: Path, primary: Path
) -> None:
    student = shutil.copytree(trained / "student", tmp_path / "student")
    damage(student)
    out = tmp_path / "p.npz"
    out.write_bytes(b"earlier predictions")
    assert_one_error(mmkd("predict", student, primary, "--out", out), message)
    assert out.read_bytes() == b"earlier predictions"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["p.npz", "primary.npz", "student"]


def test_predict_refuses_an_unwritable_out_before_loading_any_model(tmp_path: Path, primary: Path) -> None:
    missing_model = tmp_path / "no-such-student"  # the --out check comes first: the model is never read
    (tmp_path / "a-file").write_text("")
    assert_one_error(
        mmkd("predict", missing_model, primary, "--out", tmp_path / "a-file" / "p.npz"),
        f"{tmp_path / 'a-file' / 'p.npz'}: cannot be written: {tmp_path / 'a-file'} is not a folder",
    )
    assert_one_error(mmkd("predict", missing_model, primary, "--out", tmp_path), f"{tmp_path}: is a folder")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "primary.npz"]
