"""Register the deployments with their schedules, taken from the configuration.

    python deployments/deploy.py                 # train-flow/<flow.deployment_name>, monitor-flow/hourly,
                                                 # rollback-flow/manual on the work pool
    FLOW_SCHEDULE_CRON="0 4 * * *" python deployments/deploy.py
    python deployments/deploy.py --profile smoke # train-flow's default parameters
    python deployments/deploy.py --serve         # no work pool or worker: serve train-flow from here

The schedules are written once, in ``configs/flow.yaml`` (``flow.schedule_cron``) and
``configs/monitor.yaml`` (``monitor.schedule_cron``); ``deployments/prefect.yaml`` holds the same
deployments without schedules. Needs a Prefect API (``prefect server start`` and
``PREFECT_API_URL=http://127.0.0.1:4200/api``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron

from flows.monitor_flow import MonitorFlowParams, monitor_flow
from flows.rollback_flow import rollback_flow
from flows.train_flow import TrainFlowParams, train_flow
from src.config import AppConfig, load_config
from src.package import CODE_ROOT

ENTRYPOINT = "flows/train_flow.py:train_flow"
MONITOR = "flows/monitor_flow.py:monitor_flow"
MONITOR_NAME = "hourly"
ROLLBACK = "flows/rollback_flow.py:rollback_flow"


def ensure_process_pool(name: str) -> None:
    """Create the process work pool if it does not exist yet."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            print(f"Created work pool {name!r} (type process).")


def deploy_monitor_and_rollback(cfg: AppConfig) -> None:
    """monitor-flow on ``monitor.schedule_cron`` and the unscheduled rollback-flow, on the pool."""
    monitor: Any = monitor_flow.from_source(source=str(CODE_ROOT), entrypoint=MONITOR)
    monitor.deploy(
        name=MONITOR_NAME,
        work_pool_name=cfg.flow.work_pool,
        schedules=[Cron(cfg.monitor.schedule_cron, timezone=cfg.flow.schedule_timezone)],
        parameters={"params": MonitorFlowParams().model_dump()},
        tags=["clothing-classifier", "monitoring"],
        print_next_steps=False,
    )
    rollback: Any = rollback_flow.from_source(source=str(CODE_ROOT), entrypoint=ROLLBACK)
    rollback.deploy(
        name="manual",
        work_pool_name=cfg.flow.work_pool,
        tags=["clothing-classifier", "registry"],
        print_next_steps=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deployments/deploy.py", description=__doc__)
    parser.add_argument("--profile", help="default profile for the deployment's runs")
    parser.add_argument("--serve", action="store_true", help="serve instead of using a work pool")
    args = parser.parse_args(argv)
    cfg = load_config()
    params = TrainFlowParams(profile=args.profile)
    parameters: dict[str, Any] = {"params": params.model_dump()}
    schedule = Cron(cfg.flow.schedule_cron, timezone=cfg.flow.schedule_timezone)
    name = cfg.flow.deployment_name
    if args.serve:
        train_flow.serve(
            name=name,
            schedules=[schedule],
            parameters=parameters,
            global_limit=cfg.flow.concurrency_limit,
        )
        return 0
    ensure_process_pool(cfg.flow.work_pool)
    # Code is loaded by the worker from this checkout or installed package (a set_working_directory
    # pull step).
    from_checkout: Any = train_flow.from_source(source=str(CODE_ROOT), entrypoint=ENTRYPOINT)
    deployment_id = from_checkout.deploy(
        name=name,
        work_pool_name=cfg.flow.work_pool,
        schedules=[schedule],
        parameters=parameters,
        tags=["clothing-classifier", "training"],
        concurrency_limit=cfg.flow.concurrency_limit,
        print_next_steps=False,
    )
    deploy_monitor_and_rollback(cfg)
    print(
        f"Deployment train-flow/{name} ({deployment_id}): cron '{cfg.flow.schedule_cron}' "
        f"{cfg.flow.schedule_timezone}, work pool {cfg.flow.work_pool!r}.\n"
        f"Deployment monitor-flow/{MONITOR_NAME}: cron '{cfg.monitor.schedule_cron}' "
        f"{cfg.flow.schedule_timezone}.\n"
        f"Start a worker:  prefect worker start --pool {cfg.flow.work_pool}\n"
        f"Run it now:      prefect deployment run train-flow/{name}\n"
        'Roll back:       prefect deployment run rollback-flow/manual --param reason="..."'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
