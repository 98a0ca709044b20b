"""Fuzzing ``mmkd predict`` (issue 12, item 2): broken data files and broken model folders, generated
from one valid tiny student. The property: predictions are written whole (finite, one per sample),
or the command exits 1 with one ``error:`` line naming a file, never another exception, and never
a partial ``--out``. ``make fuzz`` (MMKD_FUZZ=long) runs many more examples."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests_support import fuzz_budget
from typer.testing import CliRunner

from cli.main import app

pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parents[2]
WIDTHS = {"fou": 76, "zer": 47}
FAULTS = ["missing", "extra", "shape", "dtype", "nan or inf", "beyond float32", "huge float32", "count", "bytes"]
DTYPES = ["float64", "float16", "int64", "int8", "uint8", "bool", "complex64", "U3", "object"]


def fuzz(default: int, long: int) -> settings:
    """A fixed, derandomised budget: ``default`` examples in the suite, ``long`` under ``make fuzz``."""
    budget = fuzz_budget(default, long)
    return settings(max_examples=budget, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def student(tiny_run: Path) -> Path:
    return tiny_run / "student"


@st.composite
def data_files(draw: st.DrawFn) -> tuple[bytes, int]:
    """An .npz meant for the student (and its sample count) with up to two faults: a modality missing or extra, another
    shape or dtype, NaN/inf, float64 beyond float32's range, float32 values huge enough to overflow
    inside the network, sample counts that disagree, bytes truncated, flipped or appended."""
    n = draw(st.sampled_from([1, 2, 3, 5, 0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = {name: rng.normal(size=(n, width)).astype(np.float32) for name, width in WIDTHS.items()}
    faults = draw(st.lists(st.sampled_from(FAULTS), max_size=2))
    for fault in faults:
        name = draw(st.sampled_from(sorted(WIDTHS)))
        arrays = _with_fault(draw, fault, arrays, name, n)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    payload = buffer.getvalue()
    if "bytes" in faults:
        at = draw(st.integers(0, len(payload) - 1))
        damage = draw(st.sampled_from(["truncate", "flip", "append"]))
        if damage == "truncate":
            payload = payload[:at]
        elif damage == "flip":
            payload = payload[:at] + bytes([payload[at] ^ 0xFF]) + payload[at + 1 :]
        else:
            payload += b"\0" * 64
    return payload, len(arrays["fou"]) if "fou" in arrays and arrays["fou"].ndim else n


def _with_fault(draw: st.DrawFn, fault: str, arrays: dict[str, np.ndarray], name: str, n: int) -> dict[str, np.ndarray]:
    """``arrays`` with ``fault`` applied to modality ``name`` (or to the file)."""
    values = arrays.get(name, np.zeros((n, WIDTHS[name]), np.float32))
    if fault == "bytes":  # applied to the whole file once it is written
        return arrays
    if fault == "missing":
        return {key: array for key, array in arrays.items() if key != name}
    if fault == "extra":
        extra = draw(st.sampled_from(["mor", "label", "split", "Fou"]))
        return {**arrays, extra: np.zeros((n, 3), dtype=np.float32)}
    if fault == "shape":
        shape = draw(st.sampled_from([(n, WIDTHS[name] + 1), (n, 0), (n, WIDTHS[name], 1), (n,), ()]))
        values = np.zeros(shape, dtype=np.float32)
    elif fault == "dtype":
        with np.errstate(all="ignore"), warnings.catch_warnings(action="ignore"):  # complex to real, say
            values = values.astype(draw(st.sampled_from(DTYPES)))
    elif fault == "count":
        values = np.zeros((n + draw(st.sampled_from([-1, 1])) if n else 1, WIDTHS[name]), np.float32)
    elif values.size:
        special = {"nan or inf": [np.nan, np.inf, -np.inf], "beyond float32": [1e300, -1e300, 3.5e38]}
        if fault == "huge float32":
            with np.errstate(over="ignore"):  # 1e37 overflows inside the network, or here already
                values = values * np.float32(draw(st.sampled_from([1e30, 1e37])))
        else:
            values = values.astype(np.float64)
            values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from(special[fault]))
    return {**arrays, name: values}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
CARD_FIELDS = {
    "task": st.sampled_from(["classification", "multilabel", "regression", "retrieval", "CLASSIFICATION"])
    | JSON_VALUES,
    "modalities": st.sampled_from(
        [{"zer": [47], "fou": [76]}, {"fou": [76]}, {"fou": [76], "zer": [47], "mor": [6]}, {"fou": [0], "zer": [47]}]
    )
    | st.dictionaries(st.sampled_from(["fou", "zer", "1x"]), JSON_VALUES, max_size=2),
    "class_names": st.lists(st.text(max_size=3), max_size=12) | JSON_VALUES,
}


@st.composite
def model_damage(draw: st.DrawFn) -> Callable[[Path], None]:
    """One way to break a copy of the student's folder."""
    kind = draw(st.sampled_from(["card field"] * 3 + ["card bytes", "program bytes"] * 2 + ["remove", "huge card"]))
    if kind == "card field":
        field = draw(st.sampled_from(sorted(CARD_FIELDS)))
        value = draw(CARD_FIELDS[field])

        def edit_card(folder: Path) -> None:
            card = json.loads((folder / "model.json").read_text())
            card[field] = value
            (folder / "model.json").write_text(json.dumps(card))

        return edit_card
    name = "model.json" if kind in ("card bytes", "huge card") else "student.pt2"
    cut, flip = draw(st.floats(0.0, 1.0)), draw(st.floats(0.0, 1.0))

    def damage_file(folder: Path) -> None:
        path = folder / name
        if kind == "remove":
            path.unlink()
        elif kind == "huge card":
            path.write_text(" " * (9 * 1024**2) + path.read_text())
        else:
            payload = bytearray(path.read_bytes())
            payload[int(flip * (len(payload) - 1))] ^= 0xFF
            path.write_bytes(bytes(payload[: max(1, int(cut * len(payload)))]))

    name = draw(st.sampled_from(["model.json", "student.pt2"])) if kind == "remove" else name
    return damage_file


def check_predict(student: Path, data: bytes, rows: int, folder: Path) -> None:
    """Run ``mmkd predict`` and assert the property (``rows``: the samples ``data`` holds)."""
    (folder / "data.npz").write_bytes(data)
    out = folder / "out" / "p.npz"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["predict", str(student), str(folder / "data.npz"), "--out", str(out)])
    if result.exit_code == 0:
        assert [path.name for path in out.parent.iterdir()] == ["p.npz"]
        with np.load(out) as saved:  # prediction, and scores and class_name as the task has them
            numbers = [saved[key] for key in saved.files if key != "class_name"]
            assert "prediction" in saved.files and all(len(array) == rows for array in numbers)
            assert all(np.isfinite(array).all() for array in numbers)
        return
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.exception, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(folder) in lines[0], result.stderr
    assert list(out.parent.iterdir()) == []


@fuzz(60, 3000)
@given(data=data_files())
def test_predict_on_broken_data_writes_whole_predictions_or_one_error(student: Path, data: tuple[bytes, int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        check_predict(student, *data, Path(folder))


@fuzz(25, 1000)
@given(damage=model_damage(), rows=st.sampled_from([1, 4]))
def test_predict_with_a_broken_model_folder_writes_whole_predictions_or_one_error(
    student: Path, damage: Callable[[Path], None], rows: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        broken = shutil.copytree(student, Path(folder) / "student")
        damage(broken)
        with np.load(ROOT / "core/data/builtin/mfeat.npz") as mfeat:
            buffer = io.BytesIO()
            np.savez(buffer, fou=mfeat["fou"][:rows], zer=mfeat["zer"][:rows])
        check_predict(broken, buffer.getvalue(), rows, Path(folder))
