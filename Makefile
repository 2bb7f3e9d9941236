# The two commands: `make run` (the whole service, dev configuration) and `make test`.
PYTHON ?= python3
VENV := .venv
VENV_STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: run test test-fast lint bench bench-scale profile venv jars broker worker ingress clean

run: venv
	$(VENV)/bin/reach run

# Two test processes share one broker (tests/conftest.py): most of a test's time is waiting on
# processes and Kafka, so two fill this 2-core machine's CI without starving each other's timing.
TEST_PROCESSES ?= 2
test: venv
	$(PY) -m pytest -n $(TEST_PROCESSES) $(PYTEST_ARGS)

# The tests that need neither a broker nor processes (markers set by tests/conftest.py).
test-fast: venv
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

# ruff and mypy, both configured in pyproject.toml; .ci/run runs this before the tests.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[test,lint]'
	touch $(VENV_STAMP)

# Benchmarks against a fresh local stack: bench/results/results.{json,png}, a table, and the
# table of docs/benchmarks.md rewritten from them (bench/tables.py).
bench: venv
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.tables

# py-spy samples of the worker and the ingress under an end-to-end load (bench/profile.py).
profile: venv
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	$(PY) -m bench.profile $(PROFILE_ARGS)

# Memory, restart times and read latency as stored data grows (bench/scale.py):
# bench/results/scale.{json,png} and docs/benchmarks.md's table. Loading 2,000,000 resources takes
# several minutes.
SIZES ?= 10000 200000
bench-scale: venv
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	$(PY) -m bench.scale --sizes $(SIZES)
	$(PY) -m bench.tables

# The broker's jars are fetched on first use; this target fetches them ahead of time.
jars: venv
	$(PY) -c 'from reach.broker import fetch_jars; print(fetch_jars())'

broker: venv
	$(VENV)/bin/reach broker run

worker: venv
	$(VENV)/bin/reach worker

ingress: venv
	$(VENV)/bin/reach ingress

clean:
	-$(VENV)/bin/reach broker stop
	rm -rf .data
