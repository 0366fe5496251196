# Two entry points that need only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.installed-core
DEV := $(VENV)/.installed-dev

.PHONY: demo test test-fast cov lint format bench bench-compare clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The demo needs the library alone (no dependency beyond the standard library).
$(CORE): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(CORE)

$(DEV): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(CORE) $(DEV)

demo: $(CORE)
	$(BIN)/pooled-sessions demo

SOURCES := pooled_sessions tests benchmarks scripts

lint: $(DEV)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy
	$(BIN)/python scripts/unasync.py --check

# Rewrites what lint checks: formatting, import order, the generated blocking Redis store.
format: $(DEV)
	$(BIN)/python scripts/unasync.py
	$(BIN)/ruff check --fix $(SOURCES)
	$(BIN)/ruff format $(SOURCES)

test: lint
	$(BIN)/python -m pytest

# No Redis and no slow tests: the inner loop of development (about a minute).
test-fast: $(DEV)
	$(BIN)/python -m pytest -m "not redis and not cluster and not slow"

# The whole suite under coverage (branches), with the report in the terminal and htmlcov/.
cov: $(DEV)
	$(BIN)/python -m coverage run -m pytest
	$(BIN)/python -m coverage report --skip-covered
	$(BIN)/python -m coverage html

bench: $(DEV)
	$(BIN)/python benchmarks/bench_core.py

# Every store compared; rewrites benchmarks/results/compare.{json,md,png} (a few minutes).
bench-compare: $(DEV)
	$(BIN)/python benchmarks/compare_backends.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
