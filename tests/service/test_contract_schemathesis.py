"""Schemathesis as the API contract's gate (issue 12, item 4).

Every operation of the live server's ``/openapi.json`` (uvicorn on the session's PostgreSQL and
Redis: ``api_server``) is tested with an API key through all of schemathesis's phases (examples,
coverage, fuzzing, then stateful sequences along the schema's links), positive and negative data,
with every check on (``--checks all``). The seed is fixed; ``MMKD_FUZZ=long`` (``make fuzz``)
raises the budget. Zero failures, zero errors.

It runs ``schemathesis run`` (the CLI and its ``schemathesis.toml``) rather than the pytest
plugin: the plugin's lazy loader (``schemathesis.pytest.from_fixture``, needed because the server
is a fixture) renames pytest items through ``node._nodeid``, which this pytest (9.2) no longer has.
The CLI runs the same engine, with the stateful phase included.

Identities: two owners, ``alice`` and ``bob`` (a Web Fuzzing Commons auth file), so
``object_level_authorization`` can check that one never reads the other's jobs or datasets. Alice
owns a succeeded job with an artifact and two datasets; generated path ids are drawn from those
half the time, so the handlers behind the 404 run too, and the specs she submits name her kept
dataset (a queued job holds it, so fuzzed deletes get 409) half the time, so some are accepted
and the stateful phase follows their links.

Where a check's default expectation is wrong for a documented reason, the override says why;
nothing else is relaxed.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from api_helpers import SPEC
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from tests_support import fuzz_budget

from jobs import lifecycle
from service.jobs.results import RESULT_EXAMPLE

pytestmark = pytest.mark.contract

SEED = 20261212
#: Test cases per operation and phase: seconds in the suite, minutes under ``make fuzz``.
EXAMPLES = fuzz_budget(15, 400)
#: schemathesis's own limit, below pytest-timeout's (pyproject's 600 s in the suite, the Makefile's 7200 s under
#: ``make fuzz``; tests/test_gate_timeouts.py checks both), so a slow run ends here and says so.
RUN_TIMEOUT_SECONDS = fuzz_budget(500, 7000)
STATEFUL_STEPS = fuzz_budget(20, 100)
#: positive_data_acceptance expects 2xx/3xx/401/403/404/409/429/5xx for schema-valid input. These
#: operations also answer 422 to schema-valid input, by design:
#: - submit_job: the spec's rules JSON Schema cannot state (primary and auxiliary disjoint,
#:   modalities that exist in the named dataset, `dataset.id` one of the caller's datasets, a raw
#:   URI under `MMKD_DATA_ALLOW`) are checked at submit; a breach is a 422 naming the field;
#: - upload_dataset: the body's schema is "bytes"; whether they are a valid .npz is the loader's call;
#: - create_study: every value its space can sample is tried against the base spec (a path that is no
#:   spec field, a bound the job spec refuses) and its base follows submit_job's rules;
#: - list_jobs, list_datasets, list_job_logs, list_studies: a cursor is opaque; one this server did not
#:   hand out is a 422;
#: - start_dataset_upload, complete_dataset_upload: a sharded upload's files are named once each and
#:   are all .npz or all .npy (a rule across items), and the parts must be the ones S3 took.
SCHEMA_VALID_BUT_422 = [
    "submit_job",
    "upload_dataset",
    "start_dataset_upload",
    "complete_dataset_upload",
    "create_study",
    "list_jobs",
    "list_datasets",
    "list_job_logs",
    "list_studies",
]
POSITIVE_WITH_422 = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
#: negative_data_rejection's own list, and 413: a schema-violating body (1,001 files, each with long
#: names) may also be past MMKD_MAX_BODY_BYTES, which is refused before the body is read.
NEGATIVE_REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]


@dataclass(frozen=True)
class Seeded:
    """What alice has: a succeeded job with an artifact, a dataset the fuzzer may delete and one it
    cannot (a queued job uses it); bob has nothing."""

    alice: str
    bob: str
    job_id: int
    artifact_id: int
    dataset_id: int
    kept_dataset_id: int


def _npz() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    arrays = {"image": rng.normal(size=(20, 4)), "text": rng.normal(size=(20, 3)), "label": np.arange(20) % 2}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def seeded(api_server: Any) -> Seeded:
    """Two fresh owners; alice gets a succeeded job (an artifact on the local store) and two datasets."""
    alice, bob = api_server.new_key(), api_server.new_key()
    with httpx.Client(base_url=api_server.url, headers={"Authorization": f"Bearer {alice}"}, timeout=30) as http:
        job_id = http.post("/v1/jobs", json=SPEC).raise_for_status().json()["id"]
        dataset_ids = [
            http.post("/v1/datasets", params={"name": name}, content=_npz()).raise_for_status().json()["id"]
            for name in ("fuzzed", "kept")
        ]
        holder = {**SPEC, "dataset": {"id": dataset_ids[1], "primary": ["image"], "auxiliary": ["text"]}}
        http.post("/v1/jobs", json=holder).raise_for_status()
    key = f"jobs/{job_id}/summary.json"
    (api_server.storage_root / key).parent.mkdir(parents=True, exist_ok=True)
    (api_server.storage_root / key).write_text("{}")
    engine = create_engine(api_server.database_url)
    with Session(engine) as session:
        lifecycle.transition(session, job_id=job_id, to="running")
        lifecycle.transition(session, job_id=job_id, to="succeeded", values={"result": RESULT_EXAMPLE})
        artifact = lifecycle.record_artifact(
            session, job_id=job_id, key=key, kind="summary", size_bytes=2, checksum=None
        )
        session.commit()
        artifact_id = artifact.id
    engine.dispose()
    return Seeded(alice, bob, job_id, artifact_id, *dataset_ids)


def _toml(seeded: Seeded, wfc: Path) -> str:
    """The run's ``schemathesis.toml`` (values written as JSON, which TOML reads the same). Path ids
    and, in submitted specs, the dataset and its modalities are alice's half the time, so some
    generated submits are accepted and the stateful phase follows their links."""
    ids = {"job_id": seeded.job_id, "artifact_id": seeded.artifact_id, "dataset_id": seeded.dataset_id}
    spec_fields = {
        "body.dataset.id": ("kept_dataset_id", 0.5),
        "body.dataset.primary[*]": ("primary", 0.9),
        "body.dataset.auxiliary[*]": ("auxiliary", 0.9),
    }
    lines = [
        f"seed = {SEED}",
        "[generation]",
        f"max-examples = {EXAMPLES}",
        'mode = "all"',
        "[checks.negative_data_rejection]",
        f"expected-statuses = {json.dumps(NEGATIVE_REJECTED)}",
        "[phases.stateful]",
        f"max-steps = {STATEFUL_STEPS}",
        "[auth.wfc]",
        f"path = {json.dumps(str(wfc))}",
        'user = "alice"',
        'peers = ["alice", "bob"]',
    ]
    dictionaries = {
        **{name: [value] for name, value in ids.items()},
        "kept_dataset_id": [seeded.kept_dataset_id],
        "primary": ["image"],
        "auxiliary": ["text"],
    }
    for name, values in dictionaries.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}"]
    lines.append("[parameters]")
    lines += [f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}' for name in ids]
    lines += [f'"{key}" = {{ dictionary = "{name}", probability = {p} }}' for key, (name, p) in spec_fields.items()]
    lines += [
        "[[operations]]",
        f"include-operation-id = {json.dumps(SCHEMA_VALID_BUT_422)}",
        f"checks.positive_data_acceptance.expected-statuses = {json.dumps(POSITIVE_WITH_422)}",
    ]
    return "\n".join(lines) + "\n"


def test_schemathesis_finds_nothing(api_server: Any, seeded: Seeded, tmp_path: Path) -> None:
    wfc = tmp_path / "identities.json"
    identities = {"alice": seeded.alice, "bob": seeded.bob}
    auth = [
        {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {token}"}]}
        for name, token in identities.items()
    ]
    wfc.write_text(json.dumps({"auth": auth}))
    config = tmp_path / "schemathesis.toml"
    config.write_text(_toml(seeded, wfc))
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{api_server.url}/openapi.json",
        "--checks",
        "all",
        "--workers",
        "1",
        "--no-color",
    ]
    run = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, timeout=RUN_TIMEOUT_SECONDS, check=False
    )
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
