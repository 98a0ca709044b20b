"""``mmkd datasets upload|list|show|rm`` against a live server, and ``mmkd datasets builtin``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_upload_list_show_rm(api_server: Any, tmp_path: Path) -> None:
    env = {"MMKD_URL": api_server.url, "MMKD_API_KEY": api_server.new_key()}
    path = tmp_path / "cli.npz"
    np.savez(path, speech=np.zeros((12, 5)), video=np.ones((12, 3, 7)), label=np.arange(12) % 4)
    uploaded = runner.invoke(app, ["datasets", "upload", str(path), "--name", "cli-set"], env=env)
    assert uploaded.exit_code == 0, uploaded.output
    assert "(cli-set): 12 samples; speech (5,) float64, video (3, 7) float64; label: 4 classes" in uploaded.output
    dataset_id = uploaded.output.split()[2]
    listed = runner.invoke(app, ["datasets", "list"], env=env)
    assert listed.exit_code == 0 and "cli-set" in listed.output and "4 classes" in listed.output
    shown = runner.invoke(app, ["datasets", "show", dataset_id], env=env)
    assert '"n_samples": 12' in shown.output
    assert runner.invoke(app, ["datasets", "rm", dataset_id], env=env).output.strip() == f"deleted dataset {dataset_id}"
    again = runner.invoke(app, ["datasets", "rm", dataset_id], env=env)
    assert again.exit_code == 1 and f"no dataset {dataset_id}" in again.output
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    refused = runner.invoke(app, ["datasets", "upload", str(bad)], env=env)
    assert refused.exit_code == 1 and "not a zip archive" in refused.output
    missing = runner.invoke(app, ["datasets", "upload", str(tmp_path / "nope.npz")], env=env)
    assert missing.exit_code == 1 and "no such file" in missing.output
    (tmp_path / "shards").mkdir()
    np.savez(tmp_path / "shards" / "part-0.npz", speech=np.zeros((12, 5)), label=np.arange(12) % 4)
    folder = runner.invoke(app, ["datasets", "upload", str(tmp_path / "shards")], env=env)
    assert folder.exit_code == 1 and "presigned uploads need an S3 store" in folder.output  # this server is local


def test_builtin_lists_the_shipped_datasets() -> None:
    result = runner.invoke(app, ["datasets", "builtin"])
    assert result.exit_code == 0 and "mfeat" in result.output and "basic_motions" in result.output
