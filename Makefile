# One venv for dev, tests and the demo. torch is installed first, pinned, so pip takes the CPU
# wheel that lies on disk instead of downloading a CUDA build.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint bench demo clean

install: $(STAMP)

$(STAMP): pyproject.toml sdk/pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ./sdk -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check core service worker cli sdk bench tests
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.accuracy

demo: install
	$(BIN)/python -m bench.demo

clean:
	rm -rf $(VENV) .mmkd .pytest_cache .mypy_cache .ruff_cache
