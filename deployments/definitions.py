"""The Prefect deployments, defined once: :func:`deployments` builds them from the configuration.

``deployments/deploy.py`` (``clothing-classifier deploy``) registers them, and
``deployments/prefect.yaml`` (for ``prefect deploy``) is rendered from them, schedules included, by

    python -m deployments.definitions          # rewrites deployments/prefect.yaml

Both take each schedule from :meth:`Deployment.schedule_specs` (cron and timezone from
``configs/``), so for one configuration they register the same deployments;
tests/deployments/test_definitions.py fails when the file and this module disagree, and
deploy.py refuses to run while they do (:func:`stale_prefect_yaml`).
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
    schedule_cron: str | None = None  # None: run by hand only
    schedule_timezone: str = "UTC"
    concurrency_limit: int | None = None

    def schedule_specs(self) -> list[dict[str, Any]]:
        """The schedules as prefect.yaml writes them; deploy.py builds its ``prefect.schedules.
        Schedule`` objects from the same dicts, so the two cannot register different schedules
        for one configuration."""
        if self.schedule_cron is None:
            return []
        return [{"cron": self.schedule_cron, "timezone": self.schedule_timezone, "active": True}]


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
            schedule_timezone=cfg.flow.schedule_timezone,
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
            schedule_timezone=cfg.flow.schedule_timezone,
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
# The schedules below are rendered from configs/, where they are written once: train-flow's from
# configs/flow.yaml (flow.schedule_cron, flow.schedule_timezone), monitor-flow's from
# configs/monitor.yaml (monitor.schedule_cron). To change one, edit configs/ and re-render this
# file. `clothing-classifier deploy` (python deployments/deploy.py) registers the same deployments
# with the same schedules, and refuses to run while this file is not rendered from configs/;
# only the FLOW_*/MONITOR_* environment overrides it honours are not in this file.
#
# No pull step is given, so `prefect deploy` records the directory it runs in (the repository
# root) and workers on this machine run the flow from there. For Docker/Kubernetes work pools see
# docs/scale-out.md.
"""


def prefect_yaml_entry(deployment: Deployment, work_pool: str) -> dict[str, Any]:
    """``deployment`` as an entry of prefect.yaml's ``deployments:`` list."""
    entry: dict[str, Any] = {
        "name": deployment.name,
        "entrypoint": deployment.entrypoint,
        "description": deployment.description,
        "tags": deployment.tags,
        "schedules": deployment.schedule_specs(),
    }
    if deployment.concurrency_limit is not None:
        entry["concurrency_limit"] = deployment.concurrency_limit
    entry["parameters"] = deployment.parameters
    entry["work_pool"] = {"name": work_pool, "work_queue_name": "default", "job_variables": {}}
    return entry


def prefect_yaml(cfg: AppConfig) -> str:
    """``deployments/prefect.yaml`` for ``cfg``: every deployment, with its schedules (an empty
    list: run by hand only, and ``prefect deploy`` does not ask for one), on its pool."""
    entries = [prefect_yaml_entry(d, cfg.flow.work_pool) for d in deployments(cfg)]
    spec = {
        "name": "clothing-classifier",
        "prefect-version": PREFECT_VERSION,
        "build": None,
        "push": None,
        "deployments": entries,
    }
    return HEADER + yaml.safe_dump(spec, sort_keys=False, width=100)


def stale_prefect_yaml() -> str | None:
    """Why ``deployments/prefect.yaml`` is not the rendering of the current ``configs/`` (and so
    ``prefect deploy`` would register other deployments than ``clothing-classifier deploy``), or
    None when it is, or when there is no such file (an installed package ships none)."""
    if not PREFECT_YAML.is_file():
        return None
    if PREFECT_YAML.read_text() == prefect_yaml(load_config(environ={})):
        return None
    return (
        f"{PREFECT_YAML} is not rendered from the current configs/ (schedules or deployments "
        "differ), so `prefect deploy` of it would register other deployments than this command: "
        "run `python -m deployments.definitions`, commit the file, and deploy again."
    )


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
