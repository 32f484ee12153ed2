"""The deployments are defined once (deployments/definitions.py): prefect.yaml is rendered from
them, and deploy.py registers them."""

from __future__ import annotations

import yaml

from deployments.definitions import PREFECT_YAML, deployments, prefect_yaml
from src.config import load_config


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
    assert all("schedules" not in d for d in rendered["deployments"])
