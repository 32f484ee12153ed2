# Two commands: `make train` (the whole pipeline) and `make test` (lint, types, docs, tests).
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
# make train BUDGET=30: the minutes a time-fitted run fills (default: configs/train.yaml).
BUDGET ?=
# Prefect's temporary server can take a while to come up on a busy 2-core machine; no telemetry.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= true

.PHONY: help install install-train install-serve lock lock-check train data evaluate serve test lint typecheck docs unit browser-deps postgres-deps edge-deps docker-deps image-serve image-train benchmarks soak mlflow-ui prefect-server stack stack-down clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /\1\t/' | \
		awk -F'\t' '{printf "make %-15s %s\n", $$1, $$2}'

# Installs: the Makefile brings its own installer, uv, pinned with the hashes of every platform's
# wheel in requirements/uv.txt, into .tools/ (the Python's own pip installs that one package, so any
# pip will do); uv then installs the project's environment from uv.lock, the one universal lock.
# preflight.py refuses an unsupported Python or platform in one line before anything downloads. A
# step that was interrupted left no stamp, so the next make redoes it (uv sync repairs .venv).
TOOLS ?= .tools
UV := $(TOOLS)/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

$(TOOLS)/.ready: requirements/uv.txt
	@$(PYTHON) deployments/preflight.py
	@rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r $<
	@touch $@

# The roles: serve = the base dependencies, train = + train, dev = every extra. dev syncs exactly
# (it is the superset, so stale packages go); the others only add what they lack, so a smaller
# role never strips the test tools of a larger one installed before.
SYNC_serve := --inexact
SYNC_train := --inexact --extra train
SYNC_dev := --all-extras
# .synced marks a sync that finished. Without it (a first install, or one cut off by a network
# drop or Ctrl-C) .venv is started over: a package cut off half-way may already have its metadata,
# and uv sync trusts metadata. (Not `uv sync --reinstall`: it implies --refresh, downloading every
# package again.) uv gets the interpreter's real path: a launcher's (pyenv's shim) would make it
# rebuild .venv every time.
$(VENV)/.installed-%: uv.lock pyproject.toml setup.py $(TOOLS)/.ready
	@test -e $(VENV)/.synced || rm -rf $(VENV)
	@rm -f $(VENV)/.synced
	$(UV) sync --locked --python "$$($(PYTHON) -c 'import sys; print(sys.executable)')" $(SYNC_$*)
	@touch $(VENV)/.synced $@

install: $(VENV)/.installed-dev ## create .venv and install every role from uv.lock: train, services, test, docs

install-train: $(VENV)/.installed-train ## create .venv and install the pipeline and training (train extra)

install-serve: $(VENV)/.installed-serve ## create .venv and install what serving needs (the base dependencies)

lock: $(TOOLS)/.ready ## re-resolve uv.lock and requirements/uv.txt from pyproject.toml (ARGS=--upgrade)
	echo "uv==$$($(PYTHON) -m deployments.lock uv-version)" | $(UV) pip compile --no-config - \
		--universal --generate-hashes --python-version 3.11 --no-annotate \
		--custom-compile-command "make lock" --quiet --output-file requirements/uv.txt
	$(MAKE) --no-print-directory $(TOOLS)/.ready
	$(UV) lock $(ARGS)

lock-check: $(TOOLS)/.ready ## fail when pyproject.toml and uv.lock (or the uv pin) disagree
	$(PYTHON) -m deployments.lock check
	$(UV) lock --check

train: install-train ## run the train-flow (download, validate, version, split, train, gate, promote)
	$(PY) -m flows.train_flow $(if $(BUDGET),--budget-minutes $(BUDGET))

data: install-train ## run the data-flow only (download, validate, version, split)
	$(PY) -m flows.data_flow

evaluate: install-train ## evaluate a model on the test split (ARGS="--model-uri ...")
	$(PY) -m src.evaluate $(ARGS)

monitor: install-train ## run the monitor-flow once: drift checks on the prediction log (ARGS="--dry-run")
	$(PY) -m flows.monitor_flow $(ARGS)

serve: install-serve ## serve the Production model on SERVE_HOST:SERVE_PORT (default 127.0.0.1:8000)
	$(BIN)/clothing-classifier serve

lint: install ## ruff check + ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install ## mypy
	$(BIN)/mypy src flows benchmarks deployments

# The site is built into a temporary folder (site/ is for `mkdocs build` by hand); --strict and
# mkdocs.yml's validation settings make a broken link or anchor fail.
docs: install ## build the documentation site from docs/ (mkdocs build --strict)
	@site=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir "$$site"; \
		status=$$?; rm -rf "$$site"; exit $$status

# Debian's Chromium drives the web page's end-to-end test (no browser download needed).
browser-deps: ## install Debian's Chromium for the browser test, if missing
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

unit: install ## the fast tests only (no real servers, no real data, no fresh installs)
	$(BIN)/pytest -n $(TEST_WORKERS) -m "not integration and not services and not install"

# pytest-xdist runs the tests in one process per core (TEST_WORKERS): most of a test's time is
# spent waiting for the servers, installs and trainings it starts, so the cores stay busy.
TEST_WORKERS ?= auto
# The type check (a minute of one core on a clean clone) runs beside pytest, which spends much of
# its time waiting for the servers it starts; its report follows the tests' and either fails the run.
test: lock-check install lint docs browser-deps postgres-deps edge-deps docker-deps ## what CI runs: lint, types, docs, all tests
	@report=$$(mktemp); $(BIN)/mypy src flows benchmarks deployments > $$report 2>&1 & types=$$!; \
	$(BIN)/pytest -n $(TEST_WORKERS); tests=$$?; wait $$types; typed=$$?; \
	echo "$(BIN)/mypy src flows benchmarks deployments"; cat $$report; rm -f $$report; \
	if [ $$typed -ne 0 ]; then exit $$typed; fi; exit $$tests

# Debian's PostgreSQL for the services test and `make stack`. Those run their own server in a
# temporary folder, so the package's default system cluster is not created. Its tools are found by
# what is installed (deployments/postgres.py: pg_config, PATH, /usr/lib/postgresql/<newest>).
postgres-deps: ## install Debian's PostgreSQL for the services test and make stack, if missing
	@$(PYTHON) -m deployments.postgres >/dev/null 2>&1 || ( \
		mkdir -p /etc/postgresql-common/createcluster.d && \
		echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main-cluster.conf && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

# Debian's nginx (the reverse proxy), prometheus + promtool (scraping, alert rules and their unit
# tests) and wrk (the soak's load generator) for the services tests, `make test` and `make stack`.
# The packages' own services are not started (policy-rc.d answers 101 while they install).
EDGE_BINS := /usr/sbin/nginx /usr/bin/prometheus /usr/bin/promtool /usr/bin/wrk
edge-deps: ## install Debian's nginx, prometheus (promtool) and wrk, if missing
	@for bin in $(EDGE_BINS); do test -x $$bin || missing=1; done; test -z "$$missing" || ( \
		created=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created=1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			nginx prometheus wrk >/dev/null; status=$$?; \
		test -z "$$created" || rm -f /usr/sbin/policy-rc.d; exit $$status)

# Container images (deployments/docker/, built by deployments/images.py from uv.lock; wheels are
# downloaded here, so the build reaches no index). BASE=... replaces the FROM python:3.11-slim.
image-serve: install ## build the serving image clothing-classifier-serve:<version> (BASE=python:3.11-slim)
	$(PY) -m deployments.images build serve $(if $(BASE),--base $(BASE))

image-train: install ## build the training/worker image for a Prefect Docker work pool (about 7 GB)
	$(PY) -m deployments.images build train $(if $(BASE),--base $(BASE))

# Debian's Docker and debootstrap for the image tests (which make their base image with
# debootstrap); the daemon itself is started by the machine's init, or by hand: dockerd &
docker-deps: ## install Debian's docker.io and debootstrap for the image tests, if missing
	@command -v dockerd >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || ( \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			docker.io debootstrap >/dev/null)

benchmarks: install ## run every benchmark (minutes; on a quiet machine)
	$(PY) -m benchmarks.run_all

mlflow-ui: install-train ## browse runs and the registry on http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

prefect-server: install-train ## a Prefect server with UI on http://127.0.0.1:4200
	$(BIN)/prefect server start --host 127.0.0.1

# The same services the services test starts (deployments/stack.py), state and logs in .stack/.
stack: install postgres-deps edge-deps ## the team setup here: PostgreSQL, S3, MLflow, Prefect, worker, API replicas, nginx, Prometheus
	$(PY) -m deployments.stack up --dir .stack

stack-down: ## stop what make stack started
	$(PY) -m deployments.stack down --dir .stack

soak: install edge-deps ## the soak through the proxy (SOAK_ARGS="--minutes 2"; default 30 minutes, quiet machine)
	$(PY) -m benchmarks.soak $(SOAK_ARGS)

clean: ## remove outputs and tool caches
	rm -rf outputs .pytest_cache .mypy_cache .ruff_cache
