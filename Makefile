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

.PHONY: run test install install-test lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Installing is done again only when pyproject.toml changes (or the venv is new): each stamp
# file records when its install last succeeded.
INSTALLED := $(VENV)/.installed
INSTALLED_TEST := $(VENV)/.installed-test

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(INSTALLED_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
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
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install-test
	$(BIN)/python -m bench.tip_flow
