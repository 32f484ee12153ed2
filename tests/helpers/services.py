"""Helpers for the services tests (fixtures are in tests/services/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from deployments.stack import Stack
from tests.helpers.flows import BIN, QUIET_ENV

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
MODEL_NAME = "clothing-classifier"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class Team:
    stack: Stack
    project: Path  # the checkout the flow runs write to (PATHS_ROOT)


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
        run: dict[str, Any] = httpx.get(
            url, headers=team.stack.prefect_headers(), timeout=10
        ).json()
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
