"""The schemathesis gate's own time limit fits inside pytest-timeout's, in the suite and under ``make fuzz``."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _schemathesis_limits() -> tuple[int, int]:
    """(suite, long) from ``RUN_TIMEOUT_SECONDS = fuzz_budget(suite, long)`` in the gate's test."""
    source = (ROOT / "tests" / "service" / "test_contract_schemathesis.py").read_text()
    found = re.search(r"^RUN_TIMEOUT_SECONDS = fuzz_budget\((\d+), (\d+)\)$", source, re.MULTILINE)
    assert found, "RUN_TIMEOUT_SECONDS = fuzz_budget(suite, long) is gone from test_contract_schemathesis.py"
    return int(found[1]), int(found[2])


def test_the_suites_schemathesis_run_ends_before_pytest_timeout() -> None:
    suite, _ = _schemathesis_limits()
    pytest_timeout = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["timeout"]
    assert suite < int(pytest_timeout)


def test_make_fuzz_gives_its_tests_more_than_the_long_schemathesis_run() -> None:
    _, long = _schemathesis_limits()
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nfuzz:", 1)[1].split("\n\n", 1)[0]
    assert "MMKD_FUZZ=long" in recipe
    found = re.search(r"--timeout=(\d+)", recipe)
    assert found, "make fuzz must lift pytest-timeout's 600 s (--timeout=...)"
    assert long < int(found[1])
