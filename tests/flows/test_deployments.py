"""The deployment definitions: deployments/prefect.yaml and deployments/deploy.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from flows.train_flow import TrainFlowParams
from src import registry
from src.config import load_config
from tests.helpers.flows import (
    BIN,
    PrefectServer,
    TinySources,
    flow_run_artifacts,
    make_project,
    project_env,
)

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"


def test_prefect_yaml_matches_the_flow_config() -> None:
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    by_entrypoint = {d["entrypoint"]: d for d in spec["deployments"]}
    deployment = by_entrypoint["flows/train_flow.py:train_flow"]
    rollback = by_entrypoint["flows/rollback_flow.py:rollback_flow"]
    cfg = load_config(environ={})
    assert deployment["concurrency_limit"] == cfg.flow.concurrency_limit == 1
    assert rollback["entrypoint"] == "flows/rollback_flow.py:rollback_flow"
    assert deployment["name"] == cfg.flow.deployment_name
    assert deployment["entrypoint"] == "flows/train_flow.py:train_flow"
    # The schedules are written once, in configs/, and rendered here (prefect deploy applies them).
    assert deployment["schedules"] == [
        {"cron": cfg.flow.schedule_cron, "timezone": cfg.flow.schedule_timezone, "active": True}
    ]
    assert rollback["schedules"] == []  # by hand only
    assert deployment["work_pool"]["name"] == cfg.flow.work_pool
    # The deployment's parameters are valid TrainFlowParams.
    TrainFlowParams.model_validate(deployment["parameters"]["params"])


def test_deploy_script_registers_a_scheduled_deployment_from_config(
    prefect_server: PrefectServer,
) -> None:
    env = {
        **prefect_server.env,
        "FLOW_DEPLOYMENT_NAME": "nightly-test",
        "FLOW_SCHEDULE_CRON": "30 2 * * *",
        "FLOW_WORK_POOL": "script-pool",
        "MONITOR_SCHEDULE_CRON": "15 * * * *",
    }
    env.pop("PROFILE", None)
    result = subprocess.run(
        [sys.executable, "deployments/deploy.py", "--profile", "smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "train-flow/nightly-test" in result.stdout
    # It says that these are not prefect.yaml's deployments (the pool changed all three).
    assert (
        "Note: FLOW_*/MONITOR_* or --profile changed train-flow/nightly-test, monitor-flow/hourly, "
        "rollback-flow/manual: registered with those values" in result.stdout
    )
    api = prefect_server.api_url
    deployment = httpx.get(f"{api}/deployments/name/train-flow/nightly-test", timeout=10).json()
    assert deployment["work_pool_name"] == "script-pool"
    assert deployment["global_concurrency_limit"]["limit"] == 1  # one run at a time
    rollback = httpx.get(f"{api}/deployments/name/rollback-flow/manual", timeout=10).json()
    assert rollback["work_pool_name"] == "script-pool"
    assert deployment["parameters"]["params"]["profile"] == "smoke"
    [schedule] = deployment["schedules"]
    assert schedule["schedule"]["cron"] == "30 2 * * *"
    assert schedule["schedule"]["timezone"] == "UTC"
    monitor = httpx.get(f"{api}/deployments/name/monitor-flow/hourly", timeout=10).json()
    assert monitor["work_pool_name"] == "script-pool"
    [monitor_schedule] = monitor["schedules"]
    assert monitor_schedule["schedule"]["cron"] == "15 * * * *"
    pool = httpx.get(f"{api}/work_pools/script-pool", timeout=10).json()
    assert pool["type"] == "process"
    assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"][
        "directory"
    ] == str(REPO)


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [str(BIN / "prefect"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.integration
def test_deployment_run_through_a_process_worker(
    prefect_server: PrefectServer, tiny_sources: TinySources, tmp_path: Path
) -> None:
    """prefect deploy → prefect deployment run (smoke) → prefect worker --run-once → a COMPLETED
    run and a new Production version in a temporary MLflow registry."""
    root = make_project(tmp_path / "project")
    env = {**prefect_server.env, **project_env(root, tiny_sources.good)}
    env.pop("PROFILE", None)
    _cli(env, "work-pool", "create", "local-process", "--type", "process", "--overwrite")
    _cli(env, "--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML), "--all")
    out = _cli(
        env, "deployment", "run", "train-flow/weekly", "--param", 'params={"profile": "smoke"}'
    )
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert match, out
    flow_run_id = match.group(1)
    worker = subprocess.run(
        [str(BIN / "prefect"), "worker", "start", "--pool", "local-process", "--run-once"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    api = prefect_server.api_url
    run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
    assert run["state"]["type"] == "COMPLETED", worker.stdout[-3000:] + worker.stderr[-3000:]
    assert run["parameters"]["params"]["profile"] == "smoke"
    client = registry.get_client(f"sqlite:///{root}/mlflow.db")
    production = registry.current_production(client, "clothing-classifier")
    assert production is not None and str(production.version) == "1"
    assert production.tags["validation_status"] == "passed"
    assert registry.production_consistent(client, "clothing-classifier")
    assert {"train-metrics", "gate-decision", "promotion"} <= set(
        flow_run_artifacts(api, flow_run_id)
    )
    assert (root / "data.dvc").is_file()  # versioned in the temp project, not the repo
