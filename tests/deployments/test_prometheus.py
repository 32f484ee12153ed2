"""The Prometheus side of the edge: the rendered scrape configuration and the alert rules pass
promtool, every alert has unit tests that fire it and keep it quiet, and every metric an alert
reads is one the API exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from deployments import edge
from src.config import load_config
from src.serving.app import create_app

RULES = edge.ALERT_RULES
RULE_TESTS = edge.PROMETHEUS_DIR / "alerts_test.yml"
# Series Prometheus makes itself, not the API.
PROMETHEUS_OWN = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def promtool(*args: str) -> str:
    result = subprocess.run(
        [edge.binary("promtool"), *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def alert_rules() -> list[dict[str, object]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


@pytest.mark.integration  # runs Debian's binary (make edge-deps)
def test_the_rendered_scrape_config_and_the_rules_pass_promtool(tmp_path: Path) -> None:
    conf = tmp_path / "prometheus.yml"
    conf.write_text(edge.prometheus_config(load_config(environ={}).edge, [18001, 18002]))
    out = promtool("check", "config", str(conf))
    assert "SUCCESS" in out, out
    assert f"{len(alert_rules())} rules found" in promtool("check", "rules", str(RULES))


@pytest.mark.integration  # runs Debian's binary (make edge-deps)
def test_the_alert_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(RULE_TESTS))


def test_every_alert_has_a_test_that_fires_it_and_one_that_keeps_it_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {str(rule["alert"]) for rule in alert_rules()}
    assert names - fired == set(), f"alerts no unit test fires: {sorted(names - fired)}"
    assert names - quiet == set(), f"alerts no unit test keeps quiet: {sorted(names - quiet)}"


def _metric_names(expr: str) -> set[str]:
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    words = set(re.findall(r"[a-z_][a-z0-9_]*(?=\s*(?:\{|\)|\[|$|\s|>|<|=|!))", without_labels))
    functions = {"sum", "rate", "increase", "max", "by", "histogram_quantile", "absent", "time"}
    return {w for w in words if w not in functions and w not in {"and", "or", "le", "instance"}}


def test_every_metric_an_alert_reads_is_exported_by_the_api(tmp_path: Path) -> None:
    cfg = load_config(
        overrides={
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/none.db"},
            "monitor": {"store_url": f"sqlite:///{tmp_path}/predictions.db"},
        },
        environ={},
    )
    with TestClient(create_app(cfg)) as client:
        client.get("/health")
        exported = client.get("/metrics").text
    families = set(re.findall(r"^# TYPE (\S+) (\S+)", exported, flags=re.MULTILINE))
    names = set()
    for family, kind in families:
        names.add(family)
        if kind == "counter":
            names.add(family + "_total")
        if kind == "histogram":
            names.update(family + suffix for suffix in HISTOGRAM_SUFFIXES)
    used = set().union(*(_metric_names(str(rule["expr"])) for rule in alert_rules()))
    assert used, "no metric names found in the rules"
    missing = sorted(used - names - PROMETHEUS_OWN)
    assert not missing, f"alerts read metrics the API does not export: {missing}"
