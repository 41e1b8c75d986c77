# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast test-slow lint format ui clean

setup:
	@scripts/bootstrap

demo: setup
	$(BIN)/pgbackup demo

test: setup lint
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

test-slow: setup
	$(BIN)/pytest -q -m slow

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The Dagster UI over the demo's instance and config (run `make demo` first).
ui: setup
	DAGSTER_HOME=$(CURDIR)/.demo/dagster_home PGBACKUP_CONFIG=$(CURDIR)/.demo/pgbackup.yaml \
	  $(BIN)/dagster dev -w workspace.yaml

clean:
	rm -rf .demo .pytest_cache .ruff_cache
