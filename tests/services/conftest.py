"""The team stack (deployments/stack.py, what `make stack` runs) for the services tests, and one
smoke train-flow run through it as a Prefect deployment."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments import stack as stack_module
from deployments.stack import Stack
from tests.flows.conftest import (  # reuse the tiny real data and the throw-away project
    BIN,
    QUIET_ENV,
    TinySources,
    make_project,
    project_env,
    tiny_sources,  # noqa: F401  (a fixture, registered by importing it here)
)

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
MODEL_NAME = "clothing-classifier"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class Team:
    stack: Stack
    project: Path  # the checkout the flow runs write to (PATHS_ROOT)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory, tiny_sources: TinySources) -> Iterator[Team]:  # noqa: F811
    """Every service up on 127.0.0.1; all of it stopped afterwards, also when a test fails."""
    project = make_project(tmp_path_factory.mktemp("team") / "project")
    flow_env = project_env(project, tiny_sources.good)
    # The stack decides where runs, models and data go; nothing local may take over.
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_LOCATION", "DATA_DVC_REMOTE_URL"):
        flow_env.pop(key)
    flow_env["PROFILE"] = ""
    # The smallest network the trainer builds: this test is about where things land, not accuracy.
    flow_env |= {
        "TRAIN_MODEL_PRESET": "custom",
        "TRAIN_WIDTHS": "[8, 16]",
        "TRAIN_BLOCKS_PER_STAGE": "1",
    }
    root = tmp_path_factory.mktemp("stack")
    with stack_module.running(root, ui=False, worker_env=flow_env) as stack:
        yield Team(stack, project)


def prefect_cli(team: Team, *args: str, timeout: float = 180) -> str:
    env = {
        **os.environ,
        **QUIET_ENV,
        **team.stack.client_env(),
        "PREFECT_HOME": str(team.stack.root / "cli-home"),
    }
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


def wait_flow_run(team: Team, flow_run_id: str, timeout: float) -> dict[str, Any]:
    url = f"{team.stack.prefect_api_url}/flow_runs/{flow_run_id}"
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = httpx.get(url, timeout=10).json()
        state = (run.get("state") or {}).get("type")
        if state in FINAL_STATES:
            return run
        if time.monotonic() > deadline:
            log = (team.stack.root / "worker.log").read_text(errors="replace")[-4000:]
            raise AssertionError(
                f"flow run still {state} after {timeout:.0f} s; worker log:\n{log}"
            )
        time.sleep(1.0)


@dataclass(frozen=True)
class DeploymentRun:
    flow_run: dict[str, Any]
    seconds: float


@pytest.fixture(scope="module")
def deployment_run(team: Team) -> DeploymentRun:
    """`prefect deploy` (deployments/prefect.yaml) + `prefect deployment run train-flow/weekly`
    with the smoke profile, executed by the stack's process worker."""
    started = time.monotonic()
    prefect_cli(team, "--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML), "--all")
    out = prefect_cli(
        team, "deployment", "run", "train-flow/weekly", "--param", 'params={"profile": "smoke"}'
    )
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert match, f"no flow run id in the output of `prefect deployment run`:\n{out}"
    run = wait_flow_run(team, match.group(1), timeout=240)
    log = (team.stack.root / "worker.log").read_text(errors="replace")[-4000:]
    assert run["state"]["type"] == "COMPLETED", f"flow run {run['state']}; worker log:\n{log}"
    return DeploymentRun(run, time.monotonic() - started)
