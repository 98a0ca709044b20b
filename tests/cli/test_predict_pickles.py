"""mmkd predict never runs pickled code from a student.pt2: every entry torch.export.load would
unpickle unsafely is refused with one error line before torch opens the archive."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app


class Payload:
    """Unpickling this creates ``marker``: the proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def rewrite(program: Path, edit: Callable[[dict[str, bytes]], None]) -> None:
    """Rewrite ``program`` (a zip) with ``edit`` applied to its entries, named below the root folder."""
    with zipfile.ZipFile(program) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        entries = {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}
    edit(entries)
    with zipfile.ZipFile(program, "w", zipfile.ZIP_STORED) as archive:
        for name, payload in entries.items():
            archive.writestr(f"{root}/{name}", payload)


def pickled_sample_inputs(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(entries: dict[str, bytes]) -> None:  # the safe load fails; torch retries with weights_only=False
        entries["data/sample_inputs/model.pt"] = pickle.dumps(Payload(marker))

    return edit


def pickled_weight(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(entries: dict[str, bytes]) -> None:  # use_pickle: torch.load(weights_only=False) on the weight
        config = json.loads(entries["data/weights/model_weights_config.json"])
        meta = next(iter(config["config"].values()))
        meta["use_pickle"] = True
        entries[f"data/weights/{meta['path_name']}"] = pickle.dumps(Payload(marker))
        entries["data/weights/model_weights_config.json"] = json.dumps(config).encode()

    return edit


def opaque_constant(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(entries: dict[str, bytes]) -> None:  # an opaque object: plain pickle.loads
        weights = json.loads(entries["data/weights/model_weights_config.json"])["config"]
        tensor_meta = next(iter(weights.values()))["tensor_meta"]  # read (as raw bytes) before the unpickling
        meta = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": tensor_meta}
        code = pickle.dumps(Payload(marker))
        entries["data/constants/opaque_obj_0"] = code + b"." * (-len(code) % 8)  # whole float32 elements
        entries["data/constants/model_constants_config.json"] = json.dumps({"config": {"obj": meta}}).encode()

    return edit


def legacy_state_dict(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(entries: dict[str, bytes]) -> None:  # the legacy .pt state dict goes through the same fallback
        entries["data/weights/model.pt"] = pickle.dumps(Payload(marker))

    return edit


CASES = {
    "sample inputs": (pickled_sample_inputs, "data/sample_inputs/model.pt is not plain tensors"),
    "use_pickle weight": (pickled_weight, "is pickled; predict loads plain tensors only"),
    "opaque constant": (opaque_constant, "'data/constants/opaque_obj_0', which predict does not load"),
    "legacy state dict": (legacy_state_dict, "'data/weights/model.pt', which predict does not load"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_predict_refuses_a_program_that_would_unpickle_code(case: str, tmp_path: Path, tiny_run: Path) -> None:
    make, message = CASES[case]
    marker = tmp_path / "pickled-code-ran"
    student = shutil.copytree(tiny_run / "student", tmp_path / "student")
    rewrite(student / "student.pt2", make(marker))
    data = tmp_path / "primary.npz"
    np.savez(data, fou=np.zeros((3, 76), np.float32), zer=np.zeros((3, 47), np.float32))
    result = CliRunner().invoke(app, ["predict", str(student), str(data), "--out", str(tmp_path / "p.npz")])
    assert not marker.exists()  # first: without the screen, torch runs the payload and then fails
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {student / 'student.pt2'}: "), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "p.npz").exists()


def test_an_untouched_rewritten_program_still_predicts(tmp_path: Path, tiny_run: Path) -> None:
    """The screen accepts what export_student writes (rewritten as the crafted ones are)."""
    student = shutil.copytree(tiny_run / "student", tmp_path / "student")
    rewrite(student / "student.pt2", lambda entries: None)
    data = tmp_path / "primary.npz"
    np.savez(data, fou=np.zeros((3, 76), np.float32), zer=np.zeros((3, 47), np.float32))
    result = CliRunner().invoke(app, ["predict", str(student), str(data), "--out", str(tmp_path / "p.npz")])
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "p.npz") as predictions:
        assert predictions["prediction"].shape == (3,)
