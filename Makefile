# Two commands on a fresh machine with python3 and make:
#   make demo   starts a local SeaweedFS, writes a dataset, trains a small CNN from it, compares loaders
#   make test   lint, type check and the whole test suite against a real SeaweedFS
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest bench clean

demo: $(STAMP)
	$(BIN)/seaweed-data demo

test: $(STAMP)
	$(BIN)/ruff check seaweed_data tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest --cov=seaweed_data --cov-report=term-missing --cov-fail-under=90

bench: $(STAMP)
	$(BIN)/seaweed-data bench

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0 tensorflow-cpu==2.21.0
	$(BIN)/pip install --quiet -e '.[dev,torch,tf,prometheus,local,demo]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .coverage .coverage.* .mypy_cache .ruff_cache .pytest_cache
