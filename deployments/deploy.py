"""Register the deployments with their schedules, taken from the configuration.

    python deployments/deploy.py                 # train-flow/<flow.deployment_name>, monitor-flow/hourly,
                                                 # rollback-flow/manual on the work pool
    FLOW_SCHEDULE_CRON="0 4 * * *" python deployments/deploy.py
    python deployments/deploy.py --profile smoke # train-flow's default parameters
    python deployments/deploy.py --serve         # no work pool or worker: serve train-flow from here

The deployments are defined once, in :mod:`deployments.definitions`; ``deployments/prefect.yaml``
is rendered from it, schedules included, so ``prefect deploy --prefect-file deployments/prefect.yaml
--all`` registers the same deployments. The schedules are written once, in ``configs/flow.yaml``
(``flow.schedule_cron``, ``flow.schedule_timezone``) and ``configs/monitor.yaml``
(``monitor.schedule_cron``). This command refuses to run while prefect.yaml is not rendered from
the current configs/, and says so when the environment or ``--profile`` makes it register other
values than the file. Needs a Prefect API (``prefect server start`` and
``PREFECT_API_URL=http://127.0.0.1:4200/api``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Schedule

from deployments.definitions import (
    PREFECT_YAML,
    Deployment,
    deployments,
    prefect_yaml_entry,
    stale_prefect_yaml,
)
from flows.train_flow import train_flow
from src.config import AppConfig, load_config
from src.errors import Refused
from src.package import CODE_ROOT


def ensure_process_pool(name: str) -> None:
    """Create the process work pool if it does not exist yet."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            print(f"Created work pool {name!r} (type process).")


def schedules(deployment: Deployment) -> list[Schedule]:
    """The schedules prefect.yaml writes for ``deployment``, as Prefect objects."""
    return [Schedule(**spec) for spec in deployment.schedule_specs()]


def overridden(registered: list[Deployment], cfg: AppConfig) -> list[str]:
    """The deployments this command registers other than prefect.yaml does: those the
    environment (FLOW_*, MONITOR_*) or ``--profile`` changed."""
    shipped = load_config(environ={})
    in_file = {
        (d.flow, d.name): prefect_yaml_entry(d, shipped.flow.work_pool)
        for d in deployments(shipped)
    }
    return [
        f"{d.flow}/{d.name}"
        for d in registered
        if in_file.get((d.flow, d.name)) != prefect_yaml_entry(d, cfg.flow.work_pool)
    ]


def register(deployment: Deployment, cfg: AppConfig) -> Any:
    """Register ``deployment`` on the work pool; the worker loads its code from this checkout or
    installed package (a set_working_directory pull step)."""
    from_checkout: Any = Flow.from_source(source=str(CODE_ROOT), entrypoint=deployment.entrypoint)
    return from_checkout.deploy(
        name=deployment.name,
        work_pool_name=cfg.flow.work_pool,
        schedules=schedules(deployment),
        parameters=deployment.parameters,
        description=deployment.description,
        tags=deployment.tags,
        concurrency_limit=deployment.concurrency_limit,
        print_next_steps=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deployments/deploy.py", description=__doc__)
    parser.add_argument("--profile", help="default profile for the deployment's runs")
    parser.add_argument("--serve", action="store_true", help="serve instead of using a work pool")
    args = parser.parse_args(argv)
    if stale := stale_prefect_yaml():
        raise Refused(stale)
    cfg = load_config()
    train, monitor, _rollback = all_deployments = deployments(cfg, profile=args.profile)
    if args.serve:
        train_flow.serve(
            name=train.name,
            schedules=schedules(train),
            parameters=train.parameters,
            global_limit=train.concurrency_limit,
        )
        return 0
    ensure_process_pool(cfg.flow.work_pool)
    ids = {d.flow: register(d, cfg) for d in all_deployments}
    if changed := overridden(all_deployments, cfg):
        print(
            f"Note: FLOW_*/MONITOR_* or --profile changed {', '.join(changed)}: registered "
            f"with those values; deployments/{PREFECT_YAML.name} keeps the configs/ values."
        )
    print(
        f"Deployment train-flow/{train.name} ({ids['train-flow']}): cron '{train.schedule_cron}' "
        f"{cfg.flow.schedule_timezone}, work pool {cfg.flow.work_pool!r}.\n"
        f"Deployment monitor-flow/{monitor.name}: cron '{monitor.schedule_cron}' "
        f"{cfg.flow.schedule_timezone}.\n"
        f"Start a worker:  prefect worker start --pool {cfg.flow.work_pool}\n"
        f"Run it now:      prefect deployment run train-flow/{train.name}\n"
        'Roll back:       prefect deployment run rollback-flow/manual --param reason="..."'
    )
    return 0


if __name__ == "__main__":
    from src.cli import call

    sys.exit(call("deploy", main))
