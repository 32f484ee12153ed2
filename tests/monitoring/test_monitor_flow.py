"""monitor-flow's deployment definition and its command line's failure messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.monitor_flow import MonitorFlowParams
from src import cli
from src.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_the_hourly_deployment_carries_the_monitor_config_schedule() -> None:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    [deployment] = [d for d in spec["deployments"] if d["name"] == "hourly"]
    assert deployment["entrypoint"] == "flows/monitor_flow.py:monitor_flow"
    cfg = load_config(environ={})  # written once: monitor.schedule_cron, rendered into the file
    [schedule] = deployment["schedules"]
    assert (schedule["cron"], schedule["timezone"]) == (
        cfg.monitor.schedule_cron,
        cfg.flow.schedule_timezone,
    )
    params = MonitorFlowParams.model_validate(deployment["parameters"]["params"])
    assert params.dry_run is False


def test_no_production_model_is_a_clear_one_line_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prefect_api: str,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MONITOR_STORE_URL", f"sqlite:///{tmp_path}/log.db")
    monkeypatch.delenv("PROFILE", raising=False)
    assert cli.main(["monitor"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        error.startswith("clothing-classifier monitor: No Production version")
        and "make train" in error
    )


def test_bad_settings_fail_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["monitor", "--window-hours", "-1"]) == 2
    assert "window_hours" in capsys.readouterr().err
