"""``mmkd probe``: the table, the verdict and the JSON file; mistakes refused before any training."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import TINY_MFEAT_SPEC
from typer.testing import CliRunner

from cli.main import app


def test_probe_prints_the_figures_and_writes_them(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(TINY_MFEAT_SPEC)
    out = tmp_path / "figures" / "probe.json"
    result = CliRunner().invoke(app, ["probe", str(tmp_path / "spec.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert list(figures["sets"]) == ["all primary", "fou", "zer"]
    assert figures["primary"] == ["fou", "zer"] and figures["auxiliary"] == ["mor"] and figures["teacher_epochs"] == 1
    assert 0.0 <= figures["weighted_r2"] <= 1.0
    assert "prediction:" in result.output and "all primary" in result.output
    assert f"{figures['sets']['fou']['weighted_r2']:.2f}" in result.output


def test_probe_refuses_retrieval_and_an_unwritable_out_before_training(tmp_path: Path) -> None:
    spec = tmp_path / "r.yaml"
    spec.write_text(
        "name: r\ntask: retrieval\nmethod: {name: student_only}\n"
        "dataset: {uri: missing.npz, primary: [a], auxiliary: [b], retrieval_target: c}\n"
    )
    result = CliRunner().invoke(app, ["probe", str(spec)])
    assert result.exit_code != 0 and "retrieval has none" in result.output and "Traceback" not in result.output
    (tmp_path / "spec.yaml").write_text(TINY_MFEAT_SPEC)
    result = CliRunner().invoke(app, ["probe", str(tmp_path / "spec.yaml"), "--out", str(tmp_path)])
    assert result.exit_code != 0 and "is a folder" in result.output
