"""The team stack (deployments/stack.py, what `make stack` runs) for the services tests, and one
smoke train-flow run through it as a Prefect deployment."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from deployments import stack as stack_module
from tests.helpers.flows import TinySources, make_project, project_env
from tests.helpers.services import (
    PREFECT_YAML,
    DeploymentRun,
    Team,
    prefect_cli,
    wait_flow_run,
)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory, tiny_sources: TinySources) -> Iterator[Team]:
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
    with (
        stack_module.running(root, ui=False, worker_env=flow_env) as stack,
        pytest.MonkeyPatch.context() as env,
    ):
        # This process's MLflow clients (the tests' registry calls) sign in like any client.
        for key, value in stack.mlflow_env().items():
            if key != "MLFLOW_TRACKING_URI":
                env.setenv(key, value)
        yield Team(stack, project)


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
