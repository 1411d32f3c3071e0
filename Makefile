# tinbao — the two commands of the README:
#   make run    install into .venv and run the service on the embedded SQLite default
#   make test   install into .venv and run every check: ruff, mypy, pytest (SQLite + PostgreSQL)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The PostgreSQL server for the tests. Each test creates and drops its own database there.
# Set it empty (make test TINBAO_TEST_POSTGRES_URL=) to skip the PostgreSQL variants locally.
TINBAO_TEST_POSTGRES_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/tinbao_test
export TINBAO_TEST_POSTGRES_URL
# pytest runs its tests in parallel worker processes (pytest-xdist; each worker has its own
# PostgreSQL database): one per CPU core plus one, since much of an end-to-end test is waiting
# on servers and timers. PYTEST_WORKERS=0 runs them all in one process (for pdb, or -s). Kept
# apart from PYTEST_ARGS, which CI sets to -q.
PYTEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) + 1 )))

.PHONY: run test install install-test lint bench lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Installs are pinned by the lock files (regenerate them with `make lock`). Installing is
# done again only when pyproject.toml or a lock file changes (or the venv is new): each
# stamp file records when its install last succeeded.
INSTALLED := $(VENV)/.installed
INSTALLED_TEST := $(VENV)/.installed-test

$(INSTALLED): pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c requirements.lock -e .
	touch $@

$(INSTALLED_TEST): pyproject.toml requirements-test.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c requirements-test.lock -e ".[test]"
	touch $@ $(INSTALLED)

install: $(INSTALLED)

install-test: $(INSTALLED_TEST)

run: install
	$(BIN)/tinbao run

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

test: lint
	$(BIN)/python -m tests.pg_setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

bench: install-test
	$(BIN)/python -m bench.tip_flow

# Re-pin every dependency after a change in pyproject.toml: requirements.lock (the service; the
# Dockerfile installs from it) and requirements-test.lock (plus the test extra; make test and CI).
LOCK_FLAGS := --quiet --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host
lock: $(BIN)/python
	$(BIN)/python -m pip install --quiet "pip-tools>=7.4"
	$(BIN)/pip-compile $(LOCK_FLAGS) $(LOCK_ARGS) --output-file=requirements.lock pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) $(LOCK_ARGS) --extra=test --constraint=requirements.lock \
		--output-file=requirements-test.lock pyproject.toml
