# Two commands: `make train` (the whole pipeline) and `make test` (lint, types, tests).
# Both create .venv and install the project on first use.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# The folder beside the repo stands in for the download where no data host is reachable.
DATA_SOURCE ?= $(if $(wildcard ../shared/fashion-mnist),../shared/fashion-mnist,url)
export DATA_SOURCE
PROFILE ?=
export PROFILE
# Prefect's temporary server can take a while to come up on a busy 2-core machine; no telemetry.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= true

.PHONY: help install train data evaluate serve test lint typecheck unit browser-deps benchmarks mlflow-ui prefect-server clean

help:
	@echo "make train      run the train-flow (download, version, validate, split, train, gate, promote)"
	@echo "make test       lint, type-check and run the tests"
	@echo "make serve      serve the Production model on http://127.0.0.1:8000"
	@echo "make mlflow-ui  browse runs and the registry on http://127.0.0.1:5000"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) -m flows.train_flow

data: install
	$(PY) -m flows.data_flow

evaluate: install
	$(PY) -m src.evaluate $(ARGS)

serve: install
	$(BIN)/python -m src.serving.cli

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy src flows benchmarks

# Debian's Chromium drives the web page's end-to-end test (no browser download needed).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

unit: install
	$(BIN)/pytest

test: install lint typecheck browser-deps
	$(BIN)/pytest

benchmarks: install
	$(PY) -m benchmarks.run_all

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

prefect-server: install
	$(BIN)/prefect server start --host 127.0.0.1

clean:
	rm -rf outputs .pytest_cache .mypy_cache .ruff_cache
