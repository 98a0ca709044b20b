"""A job whose spec asks for a ``reference``, through the worker: the typed result's ``gain`` and the
report's line (issue 9, item 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy.orm import Session, sessionmaker
from worker_helpers import submit

from jobs.models import Job
from service.jobs.results import JobResult
from worker import runner

SPEC: dict[str, Any] = {
    "name": "with-reference",
    "dataset": {"name": "mfeat", "primary": ["fou", "mor"], "auxiliary": ["kar"], "label_fraction": 0.2},
    "model": {"hidden_dim": 16, "repr_dim": 8},
    "method": {"name": "logit_kd", "teacher_epochs": 2},
    "reference": {"resamples": 200},
    "train": {"epochs": 2, "batch_size": 128, "seed": 1, "device": "cpu"},
}


def test_the_result_and_the_report_carry_the_gain(embedded: sessionmaker[Session], tmp_path: Path) -> None:
    job_id = submit(embedded, SPEC)
    assert runner.run_job(job_id) == "succeeded"
    with embedded() as session:
        result = session.get(Job, job_id).result  # type: ignore[union-attr]
    gain = TypeAdapter(JobResult).validate_python(result).gain
    assert gain is not None and gain.reference_method == "student_only" and gain.resamples == 200
    assert gain.student == result["student"]["accuracy"] and gain.low <= gain.value <= gain.high
    report = (tmp_path / "artifacts" / f"jobs/{job_id}/report/report.md").read_text()
    assert f"gain {gain.value:+.4f} (95% paired bootstrap interval over {gain.test_samples} test samples" in report
    assert f"student {gain.student:.4f}, reference {gain.reference:.4f}" in report
