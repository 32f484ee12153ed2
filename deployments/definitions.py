"""The Prefect deployments, defined once: :func:`deployments` builds them from the configuration.

``deployments/deploy.py`` registers them (with their schedules); ``deployments/prefect.yaml`` is
rendered from them (without schedules, for ``prefect deploy``) by

    python -m deployments.definitions          # rewrites deployments/prefect.yaml

and tests/deployments/test_definitions.py fails when the file and this module disagree.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deployments.images import ROLES, TRAIN_WORKDIR, default_tag
from flows.monitor_flow import MonitorFlowParams
from flows.train_flow import TrainFlowParams
from src.config import AppConfig, load_config

PREFECT_YAML = Path(__file__).resolve().parent / "prefect.yaml"
PREFECT_DOCKER_YAML = PREFECT_YAML.with_name("prefect-docker.yaml")
PREFECT_VERSION = "3.9.1"


@dataclass(frozen=True)
class Deployment:
    flow: str  # the flow's name, e.g. "train-flow"
    name: str
    entrypoint: str
    description: str
    tags: list[str]
    parameters: dict[str, Any] = field(default_factory=dict)
    schedule_cron: str | None = None  # applied by deploy.py; prefect.yaml has no schedules
    concurrency_limit: int | None = None


def deployments(cfg: AppConfig, profile: str | None = None) -> list[Deployment]:
    """train-flow (weekly), monitor-flow (hourly) and rollback-flow (manual) as ``cfg`` sets
    them; ``profile``: train-flow's default profile."""
    return [
        Deployment(
            flow="train-flow",
            name=cfg.flow.deployment_name,
            entrypoint="flows/train_flow.py:train_flow",
            description="Weekly retraining: download, validate, version and split Fashion-MNIST, "
            "train, evaluate, gate against Production and promote.",
            tags=["clothing-classifier", "training"],
            parameters={"params": TrainFlowParams(profile=profile).model_dump()},
            schedule_cron=cfg.flow.schedule_cron,
            concurrency_limit=cfg.flow.concurrency_limit,
        ),
        Deployment(
            flow="monitor-flow",
            name="hourly",
            entrypoint="flows/monitor_flow.py:monitor_flow",
            description="Hourly monitoring: compare the last window of predictions with the "
            "Production version's reference profile, log the drift decision to MLflow, retrain "
            "on drift when configured.",
            tags=["clothing-classifier", "monitoring"],
            parameters={"params": MonitorFlowParams().model_dump()},
            schedule_cron=cfg.monitor.schedule_cron,
        ),
        Deployment(
            flow="rollback-flow",
            name="manual",
            entrypoint="flows/rollback_flow.py:rollback_flow",
            description="Roll Production back to an earlier gate-passed version (default: the "
            "one the current Production replaced); the reason goes into `python -m src.registry "
            "history`.",
            tags=["clothing-classifier", "registry"],
        ),
    ]


HEADER = """\
# Prefect deployments (Prefect 3), RENDERED from deployments/definitions.py by
# `python -m deployments.definitions`: edit that module, not this file (a test compares them).
# Run every command from the repository root:
#
#   prefect server start                                    # API + UI on http://127.0.0.1:4200
#   export PREFECT_API_URL=http://127.0.0.1:4200/api        # in each other shell
#   prefect work-pool create local-process --type process
#   prefect --no-prompt deploy --prefect-file deployments/prefect.yaml --all
#   prefect worker start --pool local-process
#   prefect deployment run train-flow/weekly                                # as configured
#   prefect deployment run train-flow/weekly --param params='{"profile": "smoke"}'
#   prefect deployment run rollback-flow/manual --param reason="v7 misreads sandals"
#
# No schedules here: they are written once, in configs/flow.yaml (train-flow, flow.schedule_cron)
# and configs/monitor.yaml (monitor-flow, monitor.schedule_cron). `prefect deploy` of this file
# registers the deployments unscheduled (run them by hand); `clothing-classifier deploy`
# (python deployments/deploy.py) registers the same deployments with the configured schedules,
# FLOW_* and MONITOR_* overrides included.
#
# No pull step is given, so `prefect deploy` records the directory it runs in (the repository
# root) and workers on this machine run the flow from there. For Docker/Kubernetes work pools see
# docs/scale-out.md.
"""


def prefect_yaml(cfg: AppConfig) -> str:
    """``deployments/prefect.yaml`` for ``cfg``: every deployment, unscheduled, on its pool."""
    entries = []
    for deployment in deployments(cfg):
        entry: dict[str, Any] = {
            "name": deployment.name,
            "entrypoint": deployment.entrypoint,
            "description": deployment.description,
            "tags": deployment.tags,
        }
        if deployment.concurrency_limit is not None:
            entry["concurrency_limit"] = deployment.concurrency_limit
        entry["parameters"] = deployment.parameters
        entry["work_pool"] = {
            "name": cfg.flow.work_pool,
            "work_queue_name": "default",
            "job_variables": {},
        }
        entries.append(entry)
    spec = {
        "name": "clothing-classifier",
        "prefect-version": PREFECT_VERSION,
        "build": None,
        "push": None,
        "deployments": entries,
    }
    return HEADER + yaml.safe_dump(spec, sort_keys=False, width=100)


DOCKER_HEADER = """\
# The same deployments as deployments/prefect.yaml (names, parameters, schedules), with each flow
# run in a container of the training image on a Prefect Docker work pool. RENDERED from
# deployments/definitions.py by `python -m deployments.definitions`: edit that module, not this file.
#
#   make image-train                 # the image named below (deployments/docker/train.Dockerfile)
#   pip install prefect-docker       # where the worker runs (a host with Docker)
#   prefect work-pool create docker-pool --type docker
#   prefect --no-prompt deploy --prefect-file deployments/prefect-docker.yaml --all
#   prefect worker start --pool docker-pool
#
# Deploy this file or prefect.yaml, not both: same names, so the last one deployed is the one that
# runs. The services' addresses and credentials go into the work pool's environment (its base job
# template, or `--job-variable env=...` when deploying), never into this file or the image. The
# entrypoints are module paths: the image runs the installed package, not a checkout.
"""


def prefect_docker_yaml(cfg: AppConfig) -> str:
    """``deployments/prefect-docker.yaml``: every deployment of :func:`prefect_yaml`, in the
    training image on ``flow.docker_work_pool``."""
    spec = yaml.safe_load(prefect_yaml(cfg))
    # The image's working folder (not the folder `prefect deploy` runs in, the default).
    workdir = {"directory": TRAIN_WORKDIR}
    spec = {
        **{key: value for key, value in spec.items() if key != "deployments"},
        "pull": [{"prefect.deployments.steps.set_working_directory": workdir}],
        "deployments": spec["deployments"],
    }
    for entry in spec["deployments"]:
        path, _, function = entry["entrypoint"].partition(":")
        entry["entrypoint"] = f"{path.removesuffix('.py').replace('/', '.')}:{function}"
        entry["work_pool"] = {
            "name": cfg.flow.docker_work_pool,
            "work_queue_name": "default",
            "job_variables": {
                "image": default_tag(ROLES["train"]),
                "image_pull_policy": "IfNotPresent",  # built here or pulled from your registry
            },
        }
    return DOCKER_HEADER + yaml.safe_dump(spec, sort_keys=False, width=100)


def main() -> int:
    """Rewrite deployments/prefect.yaml and prefect-docker.yaml from the shipped configuration
    (no environment)."""
    cfg = load_config(environ={})
    PREFECT_YAML.write_text(prefect_yaml(cfg))
    PREFECT_DOCKER_YAML.write_text(prefect_docker_yaml(cfg))
    print(f"wrote {PREFECT_YAML} and {PREFECT_DOCKER_YAML}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
