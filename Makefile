# sfx-backend: `make demo` and `make test` are all a newcomer needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# The suite runs in this many pytest-xdist processes; each has its own PostgreSQL database and Redis number
# (tests/conftest.py). Most of its time is spent waiting on started processes, not on the CPU.
TEST_PROCESSES ?= 3
# Every package, to the hash, comes from a lock file: a fresh clone installs exactly what CI tested.
# requirements/dev.lock: the app, tests, linter and bench (make demo, make test, CI);
# requirements/runtime.lock: the app alone (the Docker image). `make lock` refreshes both.
DEV_LOCK := requirements/dev.lock
RUNTIME_LOCK := requirements/runtime.lock
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--no-header --annotation-style line

.PHONY: help install lock demo console assets lint test test-fast services migrate api worker beat flower bench clean

help:
	@echo "make demo    - run the whole flow on embedded defaults (no servers needed), audio into ./out/"
	@echo "make console - the demo, then keep it running and open the console it prints"
	@echo "make assets  - re-fetch the console's vendored front-end packages (npm registry, pinned)"
	@echo "make test    - the linter, then the whole suite against PostgreSQL, Redis and a real S3 server"
	@echo "make lint    - ruff (its rules are in pyproject.toml)"
	@echo "make bench   - the performance bench (see bench/README.md)"
	@echo "make lock    - re-resolve requirements/*.lock from pyproject.toml (UPGRADE=1: newest allowed)"
	@echo "make api | worker | beat | flower | migrate - run one process with your .env"

$(STAMP): $(DEV_LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(DEV_LOCK)
	@# The project itself (editable, so `celery -A workers` and the tests import this tree), built
	@# with the locked setuptools: no build dependency is fetched unpinned.
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

# Resolves pyproject.toml's ranges into exact, hashed pins. Keeps current pins where they still fit;
# `make lock UPGRADE=1` takes the newest release each range allows. Then `make test` and commit both files.
lock: $(STAMP)
	$(UV_COMPILE) $(if $(UPGRADE),--upgrade) --all-extras pyproject.toml requirements/build.in -o $(DEV_LOCK)
	$(UV_COMPILE) --constraint $(DEV_LOCK) pyproject.toml -o $(RUNTIME_LOCK)

demo: $(STAMP)
	$(BIN)/python -m sfx_backend.demo $(DEMO_ARGS)

# The demo, then the API and worker stay up so the console can be tried (Ctrl-C stops them).
console: $(STAMP)
	$(BIN)/python -m sfx_backend.demo --keep

# The console's front-end packages (Chart.js), fetched from the npm registry and checked against the
# pinned integrity; the output in sfx_backend/console/static/vendor/ is committed (no Node needed).
assets:
	bash scripts/console-assets.sh

services:
	@bash scripts/ensure-services.sh

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint services
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

migrate: $(STAMP)
	$(BIN)/flask --app wsgi db upgrade

api: $(STAMP) migrate
	@# gevent workers (gunicorn.conf.py): each process holds thousands of waiting clients; one process per core.
	$(BIN)/gunicorn wsgi:app --bind 127.0.0.1:$${PORT:-3000} --workers 2

worker: $(STAMP)
	$(BIN)/celery -A workers worker --loglevel INFO

beat: $(STAMP)
	$(BIN)/celery -A workers beat --loglevel INFO

# Flower shows every task's arguments and can stop workers: it runs only with FLOWER_BASIC_AUTH (user:password,
# read by Flower from the environment, so the password stays off the command line) or Flower's FLOWER_AUTH,
# or open when asked for explicitly: `make flower FLOWER_UNAUTHENTICATED=1` (or that variable in the environment).
flower: $(STAMP)
	@if [ -n "$$FLOWER_BASIC_AUTH$$FLOWER_AUTH" ]; then \
		exec $(BIN)/celery -A workers flower --address=127.0.0.1 --port=5555; \
	elif [ "$(FLOWER_UNAUTHENTICATED)" = 1 ]; then \
		echo "make flower: running Flower without authentication (FLOWER_UNAUTHENTICATED=1)" >&2; \
		unset FLOWER_BASIC_AUTH; exec $(BIN)/celery -A workers flower --address=127.0.0.1 --port=5555; \
	else \
		echo "make flower: refusing to run Flower without authentication. Set FLOWER_BASIC_AUTH=user:password," >&2; \
		echo "or run it open on purpose with FLOWER_UNAUTHENTICATED=1 (make flower FLOWER_UNAUTHENTICATED=1)." >&2; \
		exit 2; \
	fi

BENCH_ARGS ?=
bench: $(STAMP) services
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf instance out .pytest_cache
