# Two entry points that need only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.installed-core
DEV := $(VENV)/.installed-dev

.PHONY: demo test lint bench bench-compare clean

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

lint: $(DEV)
	$(BIN)/ruff check pooled_sessions tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/python scripts/unasync.py --check

test: lint
	$(BIN)/python -m pytest

bench: $(DEV)
	$(BIN)/python benchmarks/bench_core.py

# Every store compared; rewrites benchmarks/results/compare.{json,md,png} (a few minutes).
bench-compare: $(DEV)
	$(BIN)/python benchmarks/compare_backends.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
