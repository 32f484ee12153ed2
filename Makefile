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

.PHONY: help install train data evaluate serve test lint typecheck unit browser-deps postgres-deps benchmarks mlflow-ui prefect-server stack stack-down clean

help:
	@echo "make train      run the train-flow (download, version, validate, split, train, gate, promote)"
	@echo "make test       lint, type-check and run the tests"
	@echo "make serve      serve the Production model on http://127.0.0.1:8000"
	@echo "make mlflow-ui  browse runs and the registry on http://127.0.0.1:5000"
	@echo "make stack      the team setup on this machine: PostgreSQL, S3, MLflow + Prefect servers, a worker"
	@echo "make stack-down stop it"

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
	$(BIN)/uvicorn src.api:app --host 127.0.0.1 --port 8000

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

# Debian's PostgreSQL for the services test and `make stack`. Those run their own server in a
# temporary folder, so the package's default system cluster is not created.
PG_BIN ?= /usr/lib/postgresql/15/bin
export STACK_PG_BIN := $(PG_BIN)
postgres-deps:
	@test -x $(PG_BIN)/initdb || ( \
		mkdir -p /etc/postgresql-common/createcluster.d && \
		echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main-cluster.conf && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

test: install lint typecheck browser-deps postgres-deps
	$(BIN)/pytest

benchmarks: install
	$(PY) -m benchmarks.run_all

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

prefect-server: install
	$(BIN)/prefect server start --host 127.0.0.1

# The same services the services test starts (deployments/stack.py), state and logs in .stack/.
stack: install postgres-deps
	$(PY) -m deployments.stack up --dir .stack

stack-down:
	$(PY) -m deployments.stack down --dir .stack

clean:
	rm -rf outputs .pytest_cache .mypy_cache .ruff_cache
