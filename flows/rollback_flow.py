"""The Prefect flow ``rollback-flow``: move Production back, from the UI or the CLI.

    python -m flows.rollback_flow --reason "v7 misreads sandals" [--to 5]
    prefect deployment run rollback-flow/manual --param reason="..." [--param to_version=5]

It wraps :func:`src.registry.rollback` with the same lock as a promotion, records the change in
the Production history (by this flow run) and publishes it as a Prefect artifact. A running API
follows the alias, so it serves the rolled-back version at its next registry poll.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.locks import flow_actor, promotion_lock
from src import registry
from src.cli import call
from src.config import load_config


@task(name="rollback", cache_policy=NO_CACHE, persist_result=False)
def rollback_task(reason: str, to_version: str | None, profile: str | None) -> dict[str, Any]:
    cfg = load_config(profile=profile)
    name = cfg.mlflow.registered_model_name
    client = registry.get_client(cfg.tracking_uri)
    with promotion_lock(cfg):
        change = registry.rollback(client, name, reason=reason, to=to_version, actor=flow_actor())
    create_markdown_artifact(
        key="rollback",
        markdown=(
            f"## Rollback: {name}\n\nProduction v{change.from_version} -> v{change.to_version}"
            f"\n\nWhy: {change.reason}\n\nBy: {change.by} at {change.at}\n"
        ),
        description=f"Production v{change.from_version} -> v{change.to_version}",
    )
    get_run_logger().info(
        "Production rolled back from v%s to v%s: %s",
        change.from_version,
        change.to_version,
        change.reason,
    )
    return asdict(change)


@flow(
    name="rollback-flow",
    description="Move the Production model back to an earlier gate-passed version (default: the "
    "one the current Production replaced), with a reason kept in the Production history.",
    log_prints=True,
)
def rollback_flow(
    reason: str, to_version: str | None = None, profile: str | None = None
) -> dict[str, Any]:
    return rollback_task(reason, to_version, profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.rollback_flow", description=__doc__)
    parser.add_argument("--reason", required=True, help="why (kept in the history)")
    parser.add_argument("--to", help="the version to go back to (default: the previous one)")
    parser.add_argument("--profile")
    args = parser.parse_args(argv)
    change = rollback_flow(args.reason, args.to, args.profile)
    print(f"Production v{change['from_version']} -> v{change['to_version']}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(call("rollback", main))
