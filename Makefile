# Two commands do everything on a fresh clone: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE ?= $(HOME)/.cache/loan-recovery
STAMP := $(VENV)/.installed
# `make test-unit`: the tests that need no Kafka broker (tests/conftest.py refuses a broker test
# under tests/unit/).
UNIT_TESTS ?= tests/unit
UNIT_SELECT ?=
# The broker-free tests are CPU-bound and independent: one worker per core (pytest-xdist), a
# whole file per worker so a module's fixtures are built once. The broker tests run after them,
# also on two workers (each starts its own broker; a module per worker, the longest first:
# tests/conftest.py): they mostly wait on brokers, restarts and timeouts, not on the CPU.
UNIT_WORKERS ?= 2
XDIST := -n $(UNIT_WORKERS) --dist loadfile
BROKER_WORKERS ?= 2
BROKER_XDIST := -n $(BROKER_WORKERS) --dist loadfile

.PHONY: setup test test-unit demo bench lint clean broker-stop system-deps

setup: $(STAMP) system-deps
	@scripts/fetch-kafka.sh

# The compiled kernels (setup.py) rebuild when their sources change.
$(STAMP): pyproject.toml setup.py $(wildcard models/*/*.pyx)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

# promtool lints metrics/rules; chromium renders the report in a browser test.
system-deps:
	@scripts/install-system-deps.sh

test: setup
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/pytest -q -ra $(XDIST) tests/unit
	@$(BIN)/pytest -q -ra $(BROKER_XDIST) tests/integration

# No broker and no Kafka jars: what CI runs on its second interpreter.
test-unit: $(STAMP) system-deps
	@$(BIN)/python -c 'import sys; print("unit tests on Python", sys.version.split()[0])'
	@$(BIN)/pytest -q -ra $(XDIST) $(UNIT_SELECT) $(UNIT_TESTS)

demo: setup
	@$(BIN)/python scripts/demo.py

bench: setup
	@$(BIN)/python -m bench.run_all

lint: setup
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .

broker-stop:
	@$(BIN)/loan-recovery broker stop || true

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
