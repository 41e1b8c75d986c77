# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# Test processes: the tests mostly wait on servers and subprocesses; one per core.
WORKERS ?= 2
# Tests are dealt out one by one; files whose tests share an expensive fixture are
# marked xdist_group and stay in one process.
PYTEST := $(BIN)/pytest -q -n $(WORKERS) --dist loadgroup

.PHONY: setup setup-test demo test test-fast test-slow lint format ui screenshots clean

setup:
	@scripts/bootstrap

# What the tests need besides: Debian's chromium for the UI test (installed when root).
setup-test:
	@scripts/bootstrap --browser

demo: setup
	$(BIN)/pgbackup demo

test: setup-test lint
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

test-slow: setup-test
	$(PYTEST) -m slow

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

# The README's pictures, taken by the UI test from a fresh two-cluster fleet (every page it
# visits stays in tests/artifacts/).
screenshots: setup-test
	$(BIN)/pytest -q tests/integration/test_fleet_ui.py
	cp tests/artifacts/ui-graph.png tests/artifacts/ui-failed-check.png docs/

clean:
	rm -rf .demo .pytest_cache .ruff_cache tests/artifacts

# Side-by-side benchmark: `pgbackup wal-push` against pgBackRest's archive-push (installs
# Debian's pgbackrest when missing, benchmark only; writes BENCHMARKS.md). See bench/README.md.
.PHONY: bench-wal
bench-wal: setup
	$(BIN)/python bench/wal_push.py $(BENCH_ARGS)

# Side-by-side benchmark: base backup and restore against pg_basebackup and pgBackRest
# (a ~1.2 GiB database; installs Debian's pgbackrest when missing, benchmark only; writes
# BENCHMARKS.md). See bench/README.md.
.PHONY: bench-base
bench-base: setup
	$(BIN)/python bench/base_backup.py $(BENCH_ARGS)

# Side-by-side benchmark: our offsite upload to S3 (copy_key -> S3Storage) against boto3's
# upload_file (and `aws s3 cp` when installed), against a local moto server (~1.5 GiB of
# scratch files; writes BENCHMARKS.md). See bench/README.md.
.PHONY: bench-s3
bench-s3: setup
	$(BIN)/python bench/s3_upload.py $(BENCH_ARGS)

# Planning retention over 10 years of daily backups, and 10x and 100x that (pure
# computation, a few minutes; writes BENCHMARKS.md). See bench/README.md.
.PHONY: bench-retention
bench-retention: setup
	$(BIN)/python bench/retention.py $(BENCH_ARGS)

# A restore rehearsal (restore from the offsite copy, recover, verify) against `pgbackrest
# restore` of the same pgbench database (~0.5 GiB at the default scale; installs Debian's
# pgbackrest when missing, benchmark only; a few minutes; writes BENCHMARKS.md). See
# bench/README.md.
.PHONY: bench-rehearsal
bench-rehearsal: setup
	$(BIN)/python bench/rehearsal.py $(BENCH_ARGS)

# Every benchmark above, one after another (never two at once: they measure the machine),
# each rewriting its own section of BENCHMARKS.md: about 30 minutes on a quiet machine, more
# while one waits for quiet. BENCH_ARGS reaches each of them, so give only the options they
# share (--render-only, --no-report). See bench/README.md.
.PHONY: bench
bench: setup
	$(MAKE) bench-wal
	$(MAKE) bench-base
	$(MAKE) bench-s3
	$(MAKE) bench-retention
	$(MAKE) bench-rehearsal
