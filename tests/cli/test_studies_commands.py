"""``mmkd studies`` against a live server (PostgreSQL, Redis): create (idempotent, --wait), get, list,
trials, cancel; mistakes are one line and exit 1. No worker runs: the tests play its part in the
database (tests/studies_support.py) where a trial must end."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from mmkd_client import Client
from studies_support import STUDY, end_queued_jobs, run_study
from tests_support import wait_until
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


@pytest.fixture
def env(api_server: Any) -> dict[str, str]:
    """A fresh owner's server settings, and a wide terminal so that no table cell wraps."""
    return {"MMKD_URL": api_server.url, "MMKD_API_KEY": api_server.new_key(), "COLUMNS": "200"}


def write(path: Path, body: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def invoke(env: dict[str, str], *args: str) -> str:
    result = runner.invoke(app, ["studies", *args], env=env)
    assert result.exit_code == 0, result.output
    return str(result.output)


def one_line_error(env: dict[str, str], *args: str) -> str:
    result = runner.invoke(app, ["studies", *args], env=env)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def created_id(output: str, status: str = "running") -> int:
    first = output.splitlines()[0]
    assert first.startswith("created study ") and first.endswith(f" (kd): {status}"), output
    return int(first.split()[2])


def test_create_get_list_trials_and_cancel(env: dict[str, str], api_server: Any, tmp_path: Path) -> None:
    path = write(tmp_path / "study.yaml", STUDY)
    study_id = created_id(invoke(env, "create", str(path), "--idempotency-key", "k1"))
    assert created_id(invoke(env, "create", str(path), "--idempotency-key", "k1")) == study_id
    other = created_id(invoke(env, "create", str(path)))
    assert other != study_id

    shown = invoke(env, "get", str(study_id))
    assert f"study {study_id}" in shown and "│ running " in shown and "logit_kd" in shown
    assert "4 trials, 2 at once, 1 seed(s)" in shown and "winner" not in shown
    as_json = json.loads(invoke(env, "get", str(study_id), "--json"))
    assert (as_json["id"], as_json["status"], as_json["result"]) == (study_id, "running", None)
    assert as_json["spec"]["space"][0]["path"] == "method.kd_weight"

    listed = json.loads(invoke(env, "list", "--json"))
    assert [(item["id"], item["name"], item["status"]) for item in listed] == [
        (other, "kd", "running"),
        (study_id, "kd", "running"),
    ]
    assert "spec" not in listed[0]
    table = invoke(env, "list", "--limit", "1")
    assert f"│ {other} " in table and f"│ {study_id} " not in table

    trials = json.loads(invoke(env, "trials", str(study_id), "--json"))
    assert [(trial["number"], trial["state"]) for trial in trials] == [(0, "running"), (1, "running")]
    job_ids = [trial["jobs"][0]["id"] for trial in trials]
    end_queued_jobs(api_server.database_url, study_id, prune={1})
    rows = [line for line in invoke(env, "trials", str(study_id)).splitlines() if line.startswith("│")]
    assert len(rows) == 4
    assert rows[0].split("│")[1:4] == [" 0     ", " complete ", " 0.8000 "], rows[0]
    assert f"method.kd_weight={trials[0]['values']['method.kd_weight']:.4g}" in rows[0]
    assert f"{job_ids[0]} succeeded" in rows[0] and f"{job_ids[1]} pruned" in rows[1]
    assert " running " in rows[2] and " running " in rows[3]

    assert invoke(env, "cancel", str(study_id)).strip() == f"study {study_id}: cancelled"
    assert one_line_error(env, "cancel", str(study_id)) == (
        f"error: HTTP 409: study {study_id} already cancelled; nothing to cancel"
    )
    assert [item["id"] for item in json.loads(invoke(env, "list", "--status", "cancelled", "--json"))] == [study_id]
    assert f"│ {study_id} " not in invoke(env, "list", "--status", "running")
    assert "cancelled (cancelled by the owner)" in invoke(env, "get", str(study_id))


@pytest.mark.parametrize(
    ("seeds", "gain"),
    [
        (1, "gain +0.0200 [95% paired bootstrap: +0.0050, +0.0400]"),
        (
            2,
            "mean of 2 seeds: test accuracy 0.9300 vs 0.9000, gain +0.0300 "
            "[95% bootstrap over the seeds: +0.0200, +0.0400]",
        ),
    ],
)
def test_get_shows_the_winner_the_test_metric_and_the_gain(
    env: dict[str, str], api_server: Any, tmp_path: Path, seeds: int, gain: str
) -> None:
    study_id = created_id(invoke(env, "create", str(write(tmp_path / "s.yaml", {**STUDY, "seeds": seeds}))))
    run_study(api_server.database_url, study_id)
    result = json.loads(invoke(env, "get", str(study_id), "--json"))["result"]
    weight = result["winner"]["values"]["method.kd_weight"]
    finalists = ", ".join(map(str, result["finalist_job_ids"]))
    lines = invoke(env, "get", str(study_id)).splitlines()
    assert f"succeeded (trial 2 won; {seeds} finalist(s) trained)" in "\n".join(lines)
    assert lines[-4:] == [
        f"winner: trial 2 (method.kd_weight={weight:.4g}), validation accuracy 0.9500",
        f"test accuracy 0.9300 (mean over finalist jobs {finalists}; the student is job {result['student_job_id']}'s)",
        lines[-2],
        "trials: complete 4",
    ]
    assert lines[-2].startswith("against student_only") and lines[-2].endswith(gain), lines[-2]


def first_study_id(env: dict[str, str]) -> int:
    """The id of the owner's study, once the command under test created it."""
    with Client(env["MMKD_URL"], env["MMKD_API_KEY"]) as sdk:
        study = wait_until(lambda: next(sdk.studies(), None), timeout=20, what="the study")
    assert study is not None
    return study.id


def test_create_wait_follows_the_study_to_its_result(env: dict[str, str], api_server: Any, tmp_path: Path) -> None:
    path = write(tmp_path / "study.yaml", STUDY)

    def play_the_worker() -> None:
        run_study(api_server.database_url, first_study_id(env))

    worker = threading.Thread(target=play_the_worker)
    worker.start()
    try:
        output = invoke(env, "create", str(path), "--wait", "--poll", "0.1", "--timeout", "60")
    finally:
        worker.join()
    study_id = created_id(output)
    assert f"study {study_id}: succeeded (trial 2 won; 1 finalist(s) trained)" in output
    assert "winner: trial 2 (method.kd_weight=" in output and "test accuracy 0.9300" in output
    assert "gain +0.0200 [95% paired bootstrap: +0.0050, +0.0400]" in output


def test_create_wait_on_a_cancelled_study_is_one_line(env: dict[str, str], tmp_path: Path) -> None:
    def cancel_it() -> None:
        study_id = first_study_id(env)
        with Client(env["MMKD_URL"], env["MMKD_API_KEY"]) as sdk:
            sdk.cancel_study(study_id)

    canceller = threading.Thread(target=cancel_it)
    canceller.start()
    try:
        args = [
            "studies",
            "create",
            str(write(tmp_path / "s.yaml", STUDY)),
            "--wait",
            "--poll",
            "0.2",
            "--timeout",
            "60",
        ]
        result = runner.invoke(app, args, env=env)
    finally:
        canceller.join()
    assert result.exit_code == 1, result.output
    first = result.output.splitlines()[0]  # the cancel may land before the create has answered
    study_id = created_id(result.output, "cancelled" if first.endswith("cancelled") else "running")
    assert result.output.splitlines()[-1] == f"error: study {study_id} was cancelled: cancelled by the owner"


def test_a_bad_study_file_is_one_line_and_sends_nothing(env: dict[str, str], tmp_path: Path) -> None:
    body = {**STUDY, "space": [{"path": "method.kd_weight", "type": "float", "low": -1, "high": 1}]}
    error = one_line_error(env, "create", str(write(tmp_path / "bad.yaml", body)))
    assert error.startswith(f"error: {tmp_path / 'bad.yaml'}: invalid study: ")
    assert "space.0: method.kd_weight = -1.0 makes an invalid job spec" in error
    error = one_line_error(env, "create", str(write(tmp_path / "zero.yaml", {**STUDY, "trials": 0})))
    assert error.endswith("invalid study: trials: Input should be greater than or equal to 1")
    assert (
        one_line_error(env, "create", str(tmp_path / "none.yaml")) == f"error: {tmp_path / 'none.yaml'}: no such file"
    )
    assert json.loads(invoke(env, "list", "--json")) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["get", "999999999"], "HTTP 404: no study 999999999"),
        (["trials", "999999999"], "HTTP 404: no study 999999999"),
        (["cancel", "999999999"], "HTTP 404: no study 999999999"),
        (["list", "--api-key", "mmkd_wrong"], "HTTP 401"),
        (["list", "--status", "finished"], "HTTP 422"),
    ],
)
def test_mistakes_are_one_line(env: dict[str, str], args: list[str], needle: str) -> None:
    assert needle in one_line_error(env, *args)


def test_a_job_of_a_study_shows_its_study(env: dict[str, str], tmp_path: Path) -> None:
    study_id = created_id(invoke(env, "create", str(write(tmp_path / "s.yaml", STUDY))))
    trials = json.loads(invoke(env, "trials", str(study_id), "--json"))
    result = runner.invoke(app, ["jobs", "get", str(trials[1]["jobs"][0]["id"])], env=env)
    assert result.exit_code == 0, result.output
    assert f"│ study    │ {study_id}, trial 1 " in result.output


def docs_examples() -> list[str]:
    """The study files docs/api.md shows in its *Studies* section (indented blocks that start with a name)."""
    section = DOCS.read_text().split("\n## Studies\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"(?:^    .*\n)+", section, flags=re.MULTILINE)
    return ["\n".join(line[4:] for line in block.splitlines()) for block in blocks if block.startswith("    name: ")]


def test_the_docs_study_examples_create_as_written(env: dict[str, str], tmp_path: Path) -> None:
    examples = docs_examples()
    assert len(examples) == 2
    made = []
    for index, text in enumerate(examples):
        path = tmp_path / f"example-{index}.yaml"
        path.write_text(text)
        output = invoke(env, "create", str(path))
        assert output.startswith("created study ") and output.rstrip().endswith(": running"), output
        made.append(json.loads(invoke(env, "get", output.split()[2], "--json")))
    auto, explicit = made
    assert auto["spec"]["base"]["method"] == {"name": "auto"} and auto["spec"]["seeds"] == 3
    assert [param["when"] for param in explicit["spec"]["space"]] == [
        None,
        {"method.name": ["logit_kd"]},
        {"method.name": ["dml"]},
        {"method.name": ["logit_kd", "dml"]},
        None,
    ]
    first = json.loads(invoke(env, "trials", str(explicit["id"]), "--json"))[0]
    assert first["values"] == {
        "method.name": "logit_kd",
        "method.kd_weight": 1.0,
        "method.kd_temperature": 4,
        "train.lr": first["values"]["train.lr"],
    }
    assert 1e-4 <= first["values"]["train.lr"] <= 1e-2


def test_create_wait_gives_up_after_its_timeout(env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", STUDY)
    result = runner.invoke(
        app, ["studies", "create", str(path), "--wait", "--poll", "0.1", "--timeout", "0.3"], env=env
    )
    assert result.exit_code == 1, result.output
    study_id = created_id(result.output)
    assert result.output.splitlines()[1:] == [
        f"study {study_id}: running",
        f"error: study {study_id} did not end within 0.3s",
    ]


def test_watching_a_pruned_trial_job_ends_without_an_error(
    env: dict[str, str], api_server: Any, tmp_path: Path
) -> None:
    study_id = created_id(invoke(env, "create", str(write(tmp_path / "s.yaml", STUDY))))
    end_queued_jobs(api_server.database_url, study_id, prune={0})
    job_id = json.loads(invoke(env, "trials", str(study_id), "--json"))[0]["jobs"][0]["id"]
    result = runner.invoke(app, ["jobs", "watch", str(job_id)], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"job {job_id} pruned: test: pruned at epoch 1"
