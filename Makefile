# guardq — every entry point is a target here; CI calls `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SGLANG ?=
# The local backend's torch: pinned so pip takes the CPU wheel lying in its find-links (plain `torch` would
# pull a multi-GB CUDA build). On a GPU machine: make install TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install services test test-chaos lint run bench clean

help:  ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q '$(TORCH_SPEC)' -e '.[dev,local]'
	@touch $(STAMP)

install: $(STAMP)  ## Create .venv and install guardq with its dev tools and the local (transformers) extra

services:  ## Make sure a Redis can be started or reached for the tests
	@bash infra/dev/ensure-services.sh

test: install services  ## Run the whole test suite (starts its own Redis, S3, SGLang test server, workers)
	$(BIN)/python -m pytest -m "not chaos and not bench" $(PYTEST_ARGS)

test-chaos: install services  ## Fault/load/hostile-input suite, fast and full variants; rewrites docs/reliability.md
	rm -rf var/reliability
	$(BIN)/python -m pytest tests/chaos -p no:cacheprovider $(PYTEST_ARGS); status=$$?; \
		$(BIN)/python -m tests.chaos.report; exit $$status

lint: install  ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

run: install  ## The main job: Redis + worker + sample images → verdict events (SGLANG=simulated for the test server)
	$(BIN)/python infra/dev/run.py $(if $(filter simulated,$(SGLANG)),--simulated,)

bench: install services  ## Benchmarks (P1–P4, memory); prints a table, writes bench-results/*.json
	$(BIN)/python -m tests.benchmarks $(BENCH)

clean:  ## Remove the virtualenv and local state
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
