# sfx-backend: `make demo` and `make test` are all a newcomer needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help install demo test test-fast services migrate api worker beat flower bench clean

help:
	@echo "make demo    - run the whole flow on embedded defaults (no servers needed), audio into ./out/"
	@echo "make test    - the whole suite against PostgreSQL, Redis and a real S3 server"
	@echo "make bench   - the performance bench (see bench/README.md)"
	@echo "make api | worker | beat | flower | migrate - run one process with your .env"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sfx_backend.demo

services:
	@bash scripts/ensure-services.sh

test: $(STAMP) services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

migrate: $(STAMP)
	$(BIN)/flask --app wsgi db upgrade

api: $(STAMP) migrate
	$(BIN)/gunicorn wsgi:app --bind 127.0.0.1:$${PORT:-3000} --workers 2 --threads 8

worker: $(STAMP)
	$(BIN)/celery -A workers worker --pool threads --concurrency 32 --loglevel INFO

beat: $(STAMP)
	$(BIN)/celery -A workers beat --loglevel INFO

flower: $(STAMP)
	$(BIN)/celery -A workers flower --address=127.0.0.1 --port=5555 $${FLOWER_BASIC_AUTH:+--basic-auth=$$FLOWER_BASIC_AUTH}

BENCH_ARGS ?=
bench: $(STAMP) services
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf instance out .pytest_cache
