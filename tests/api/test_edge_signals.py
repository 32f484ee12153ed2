"""What the edge reads from the API: the request id (from the proxy, into the log line and back
to the client) and the gauges the alerts use (the registry's Production version, whether it
failed to load, when the served version was registered)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from src.serving.app import create_app
from tests.helpers.api import Registry, api_client_for, make_config, wait_until
from tests.helpers.edge import broken_version


def gauge(client: TestClient, name: str) -> float:
    text = client.get("/metrics").text
    match = re.search(rf"^{name} (\S+)$", text, flags=re.MULTILINE)
    assert match, f"{name} is not in /metrics"
    return float(match.group(1))


def request_lines(err: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "request"]


def test_the_request_id_from_the_proxy_is_logged_and_sent_back(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    with TestClient(create_app(make_config(registry.tracking_uri, registry.name))) as client:
        given = client.get("/health", headers={"X-Request-ID": "edge-4f2a.9:x"})
        made = client.get("/health")
        hostile = client.get("/health", headers={"X-Request-ID": 'a" {"forged": 1}'})
    lines = request_lines(capsys.readouterr().err)
    assert given.headers["x-request-id"] == "edge-4f2a.9:x"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    # Not a plain id: replaced by the API's own, never copied into the log.
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])
    logged = [line.get("request_id") for line in lines]
    assert logged == [
        "edge-4f2a.9:x",
        made.headers["x-request-id"],
        hostile.headers["x-request-id"],
    ]


def test_the_gauges_show_a_production_version_that_failed_to_load(registry: Registry) -> None:
    before = time.time()
    v1 = registry.add_production("tshirt")
    client = api_client_for(registry)
    try:
        assert gauge(client, "model_production_version") == float(v1)
        assert gauge(client, "model_load_failed") == 0
        registered = gauge(client, "model_registered_timestamp_seconds")
        assert before - 5 <= registered <= time.time() + 5, registered

        broken = broken_version(registry)
        registry.promote(broken)
        wait_until(lambda: gauge(client, "model_load_failed") == 1, timeout=30)
        assert gauge(client, "model_production_version") == float(broken)
        assert gauge(client, "model_version") == float(v1)  # the old one keeps serving

        good = registry.add_production("sneaker")
        wait_until(lambda: gauge(client, "model_version") == float(good), timeout=30)
        assert gauge(client, "model_load_failed") == 0
        assert gauge(client, "model_production_version") == float(good)
    finally:
        client.__exit__(None, None, None)


def test_no_model_and_no_registry_read_yet_is_not_a_load_failure(tmp_path: Path) -> None:
    cfg = make_config(f"sqlite:///{tmp_path}/empty.db", "nothing-here")
    with TestClient(create_app(cfg)) as client:
        assert gauge(client, "model_load_failed") == 0
        assert gauge(client, "model_production_version") == -1
        assert gauge(client, "model_registered_timestamp_seconds") == 0
