# One venv for dev, tests and the demo. torch is installed first, pinned, so pip takes the CPU
# wheel that lies on disk instead of downloading a CUDA build.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# openapi-python-client pins a typer older than ours, so it gets a venv of its own; the contract
# test (tests/contract/test_generated_client.py) generates a client with it from the live schema.
TOOLS := $(VENV)/tools
TOOLS_STAMP := $(TOOLS)/.installed

.PHONY: install servers test lint bench demo clean mutation fuzz screenshots

install: $(STAMP) $(TOOLS_STAMP) servers

$(STAMP): pyproject.toml sdk/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ./sdk -e '.[dev]'
	touch $(STAMP)

$(TOOLS_STAMP):
	test -x $(TOOLS)/bin/python || $(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet 'openapi-python-client==0.29.*'
	touch $(TOOLS_STAMP)

# The server binaries the tests start throwaway PostgreSQL and Redis from when none is running
# (tests/throwaway_services.py), and the browser the dashboard's tests drive (tests/ui): Debian's
# packages, installed only when missing and only as root.
INITDB_GLOB ?= /usr/lib/postgresql/*/bin/initdb
servers:
	@packages=""; \
	ls $(INITDB_GLOB) >/dev/null 2>&1 || packages="$$packages postgresql"; \
	command -v redis-server >/dev/null || packages="$$packages redis-server"; \
	command -v chromium >/dev/null || packages="$$packages chromium chromium-driver"; \
	if [ -z "$$packages" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "missing:$$packages (make install installs them as root)"; exit 0; fi; \
	echo "installing$$packages"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$packages

# Two pytest processes (pytest-xdist), a test file each at a time: the integration tests mostly wait on
# their workers and servers, so two of them overlap on this machine's 2 cores (each file's module
# fixtures stay in one process). Every session claims its own databases and ports (tests/conftest.py).
# One compute thread per process (OMP_NUM_THREADS=1, inherited by workers and ranks): two pytest
# processes and the workers they start already share 2 cores, and torch's spinning OpenMP threads,
# oversubscribed, ran two trainings at half speed (48 s against 24 s for the same pair).
test: install
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n 2 --dist loadfile

lint: install
	$(BIN)/ruff check settings.py core jobs storage service worker cli sdk bench tests
	$(BIN)/mypy

# The benchmarks (the accuracy ones take about an hour on 2 cores); docs/ say what each reports.
bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.api_load --workers 2 --requests 1600 --rounds 3
	$(BIN)/python -m bench.dashboards
	$(BIN)/python -m bench.accuracy
	$(BIN)/python -m bench.weak_teacher
	$(BIN)/python -m bench.explore_paper

# Mutation testing of core/objectives (about half an hour on 2 cores); docs/quality.md has the score.
mutation: install
	$(BIN)/pip install --quiet -e '.[mutation]'
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results

# The fuzzers (Hypothesis over the spec parser, the .npz loader and predict; schemathesis over the
# API) with long budgets; the suite runs the same tests with small fixed budgets. Each test may run
# 2 hours here (pyproject's 600 s is the suite's); schemathesis's own limit under MMKD_FUZZ=long sits below.
fuzz: install
	MMKD_FUZZ=long $(BIN)/pytest -q -m "fuzz or contract" -p no:cacheprovider --timeout=7200

# The dashboard's screenshots in docs/ui/, taken by its browser tests (docs/ui.md).
screenshots: install
	MMKD_UI_SCREENSHOTS=docs/ui $(BIN)/pytest -q tests/ui -p no:cacheprovider

demo: install
	$(BIN)/python -m bench.demo

clean:
	rm -rf $(VENV) .mmkd .pytest_cache .mypy_cache .ruff_cache
