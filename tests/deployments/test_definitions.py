"""The deployments are defined once (deployments/definitions.py): prefect.yaml is rendered from
them, and deploy.py registers them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from deployments.definitions import PREFECT_YAML, deployments, prefect_yaml
from src.config import CONFIG_DIR_ENV, load_config
from src.package import DEFAULT_CONFIG_DIR as CONFIG_DIR


def test_prefect_yaml_is_rendered_from_the_definitions() -> None:
    assert PREFECT_YAML.read_text() == prefect_yaml(load_config(environ={})), (
        "deployments/prefect.yaml and deployments/definitions.py disagree: edit the module, then "
        "run `python -m deployments.definitions`"
    )


def test_the_configuration_names_the_deployments_and_their_schedules() -> None:
    cfg = load_config(
        overrides={"flow": {"deployment_name": "nightly", "schedule_cron": "0 1 * * *"}},
        environ={},
    )
    by_flow = {d.flow: d for d in deployments(cfg, profile="smoke")}
    assert sorted(by_flow) == ["monitor-flow", "rollback-flow", "train-flow"]
    train = by_flow["train-flow"]
    assert (train.name, train.schedule_cron) == ("nightly", "0 1 * * *")
    assert train.parameters["params"]["profile"] == "smoke"
    assert by_flow["monitor-flow"].schedule_cron == cfg.monitor.schedule_cron
    assert by_flow["rollback-flow"].schedule_cron is None
    rendered = yaml.safe_load(prefect_yaml(cfg))
    assert [d["name"] for d in rendered["deployments"]] == ["nightly", "hourly", "manual"]
    # The schedules are rendered into the file (prefect deploy registers them), from configs/.
    assert [d["schedules"] for d in rendered["deployments"]] == [
        [{"cron": "0 1 * * *", "timezone": cfg.flow.schedule_timezone, "active": True}],
        [
            {
                "cron": cfg.monitor.schedule_cron,
                "timezone": cfg.flow.schedule_timezone,
                "active": True,
            }
        ],
        [],  # rollback: by hand only
    ]


def test_deploy_refuses_while_prefect_yaml_is_not_rendered_from_configs(tmp_path: Path) -> None:
    """Someone changed a schedule in configs/ without re-rendering prefect.yaml: `prefect deploy`
    would register the old schedule, so `clothing-classifier deploy` registers nothing either."""
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    flow_yaml = configs / "flow.yaml"
    flow_yaml.write_text(flow_yaml.read_text().replace('"0 3 * * 1"', '"0 4 * * 1"'))
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOW_")}
    env[CONFIG_DIR_ENV] = str(configs)
    assert 'schedule_cron: "0 4 * * 1"' in flow_yaml.read_text()
    # A port nothing listens on: without the refusal the command fails there, and quickly.
    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "clothing-classifier"), "deploy"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    [error] = result.stderr.strip().splitlines()
    assert "prefect.yaml is not rendered from the current configs/" in error
    assert "run `python -m deployments.definitions`" in error
