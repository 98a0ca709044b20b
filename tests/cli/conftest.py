"""Fixtures of the local commands' tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import TINY_MFEAT_SPEC
from typer.testing import CliRunner

from cli.main import app


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished ``mmkd train`` run of a tiny mfeat student (primary fou and zer), trained once
    per session and shared read-only by the tests that predict with it or refuse to touch it."""
    folder = tmp_path_factory.mktemp("tiny-run")
    (folder / "spec.yaml").write_text(TINY_MFEAT_SPEC)
    result = CliRunner().invoke(app, ["train", str(folder / "spec.yaml"), "--out", str(folder / "run")])
    assert result.exit_code == 0, result.output
    return folder / "run"
