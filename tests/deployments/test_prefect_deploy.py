"""`prefect deploy` of deployments/prefect.yaml on a real Prefect server registers train-flow and
monitor-flow on the schedules written in configs/: read back through Prefect's client, planned by
Prefect's scheduler, shown by the Prefect UI in headless Chromium; and `clothing-classifier deploy`
registers exactly the same deployments."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from deployments.definitions import PREFECT_YAML, deployments
from src.config import AppConfig, load_config
from tests.api.test_web_page import browser_page  # noqa: F401  (the Chromium page fixture)
from tests.helpers.api import wait_until
from tests.helpers.flows import BIN, PrefectServer

REPO = Path(__file__).resolve().parents[2]
# How the Prefect UI words the shipped crons (its own cron-to-text); a cron changed in configs/
# needs its wording here.
UI_WORDING = {"0 3 * * 1": "At 03:00 AM, only on Monday"}
# The settings the deployments are read from: the user's shell must not change what is tested.
CONFIG_ENV_PREFIXES = ("FLOW_", "MONITOR_", "PROFILE", "CONFIG_DIR")


@pytest.fixture(scope="module")
def cfg() -> AppConfig:
    return load_config(environ={})


def names(cfg: AppConfig) -> dict[str, str]:
    """flow name -> "flow/deployment" for every deployment prefect.yaml holds."""
    return {d.flow: f"{d.flow}/{d.name}" for d in deployments(cfg)}


def cli_env(server: PrefectServer) -> dict[str, str]:
    return {k: v for k, v in server.env.items() if not k.startswith(CONFIG_ENV_PREFIXES)}


def run_cli(env: dict[str, str], *argv: str) -> str:
    result = subprocess.run(
        list(argv), cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer, cfg: AppConfig) -> Iterator[PrefectServer]:
    """The README's team path: a process pool, then `prefect deploy ... --all`; the deployments
    are deleted after (with their planned runs), so no schedule outlives this module."""
    env = cli_env(prefect_server)
    prefect = str(BIN / "prefect")
    pool = cfg.flow.work_pool
    run_cli(env, prefect, "work-pool", "create", pool, "--type", "process", "--overwrite")
    run_cli(env, prefect, "--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML), "--all")
    try:
        yield prefect_server
    finally:
        for name in names(cfg).values():
            found = httpx.get(f"{prefect_server.api_url}/deployments/name/{name}", timeout=30)
            if found.status_code == 200:
                httpx.delete(
                    f"{prefect_server.api_url}/deployments/{found.json()['id']}", timeout=30
                )


def read_deployments(cfg: AppConfig) -> dict[str, Any]:
    """flow name -> the deployment as Prefect's client reads it (PREFECT_API_URL: the server)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {flow: client.read_deployment_by_name(name) for flow, name in names(cfg).items()}


def schedules(deployment: Any) -> list[tuple[str, str, bool]]:
    return [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules]


def planned_runs(deployment_id: Any) -> list[Any]:
    """The runs Prefect's scheduler planned for a deployment, soonest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    run_filter = FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
    )
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=run_filter, sort=FlowRunSort.EXPECTED_START_TIME_ASC
        )
    return [run for run in runs if run.auto_scheduled]


def next_cron_time(cron: str, timezone: str, after: datetime) -> datetime:
    """The first time ``cron`` fires after ``after``, in ``timezone`` (Prefect's own croniter)."""
    from prefect._vendor.croniter import croniter

    fires: datetime = croniter(cron, after.astimezone(ZoneInfo(timezone))).get_next(datetime)
    return fires


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_prefect_deploy_registers_the_configured_schedules(
    deployed: PrefectServer, prefect_api: str, cfg: AppConfig
) -> None:
    registered = read_deployments(cfg)
    timezone = cfg.flow.schedule_timezone
    assert schedules(registered["train-flow"]) == [(cfg.flow.schedule_cron, timezone, True)]
    assert schedules(registered["monitor-flow"]) == [(cfg.monitor.schedule_cron, timezone, True)]
    assert schedules(registered["rollback-flow"]) == []  # by hand only
    assert not registered["train-flow"].paused
    # ... so Prefect plans the weekly retraining: its next run at the cron's next time.
    train = registered["train-flow"]
    first = wait_until(lambda: planned_runs(train.id), timeout=120, interval=1.0)[0]
    expected = next_cron_time(cfg.flow.schedule_cron, timezone, first.created)
    assert first.expected_start_time == expected, (first.expected_start_time, expected)


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_the_prefect_ui_shows_train_flow_on_its_schedule(
    deployed: PrefectServer,
    browser_page: Any,  # noqa: F811
    cfg: AppConfig,
) -> None:
    cron, timezone = cfg.flow.schedule_cron, cfg.flow.schedule_timezone
    assert cron in UI_WORDING, f"configs/flow.yaml's cron {cron!r}: add the UI's wording of it"
    ui = deployed.api_url.removesuffix("/api")
    page = browser_page

    def local_only(route: Any) -> None:  # the page reaches nothing but this server
        if route.request.url.startswith(ui + "/"):
            route.continue_()
        else:
            route.abort()

    page.route("**/*", local_only)
    page.goto(f"{ui}/deployments")
    row = page.get_by_role("row").filter(has_text="train-flow")
    row.get_by_role("link", name=cfg.flow.deployment_name, exact=True).click()
    page.wait_for_url("**/deployments/deployment/**")
    page.get_by_role("link", name="train-flow", exact=True).first.wait_for()
    schedule = page.get_by_text(UI_WORDING[cron], exact=True)
    schedule.wait_for()
    schedule.hover()  # the tooltip names the schedule's timezone
    tooltip = page.get_by_role("tooltip").filter(has_text=UI_WORDING[cron])
    tooltip.wait_for()
    assert tooltip.inner_text().strip() == f"{UI_WORDING[cron]} ({timezone})"
    assert page.get_by_role("switch").get_attribute("aria-checked") == "true"  # active


def comparable(deployment: Any) -> dict[str, Any]:
    """What a deployment does, without the ids and times a new registration changes."""
    volatile = {"id", "created", "updated", "updated_by", "version", "version_id", "last_polled"}
    fields = deployment.model_dump(mode="json", exclude=volatile)
    fields["schedules"] = [
        s.model_dump(mode="json", exclude={"id", "created", "updated"})
        for s in deployment.schedules
    ]
    return fields


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_clothing_classifier_deploy_registers_what_prefect_yaml_does(
    deployed: PrefectServer, prefect_api: str, cfg: AppConfig
) -> None:
    from_prefect_yaml = {flow: comparable(d) for flow, d in read_deployments(cfg).items()}
    out = run_cli(cli_env(deployed), str(BIN / "clothing-classifier"), "deploy")
    assert "Note:" not in out  # nothing in the environment changed a deployment
    from_deploy = {flow: comparable(d) for flow, d in read_deployments(cfg).items()}
    assert sorted(from_deploy) == sorted(from_prefect_yaml)
    for flow, registered in from_deploy.items():
        assert registered == from_prefect_yaml[flow], f"{flow}: deploy.py differs from prefect.yaml"
    assert from_deploy["train-flow"]["schedules"][0]["schedule"]["cron"] == cfg.flow.schedule_cron
