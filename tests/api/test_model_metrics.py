"""``/model`` answers 200 when the run's metrics from an MLflow server hold NaN or infinities."""

from __future__ import annotations

import http.server
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import mlflow
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from src.api import create_app
from src.model_io import log_onnx
from tests.api.test_registry_reader import mlflow_server  # noqa: F401  (fixture)
from tests.helpers.api import ModelSources, Registry, constant_model, make_config, wait_until

# MLflow's spellings of NaN, +inf and -inf, and the bare JSON tokens the proxy sends instead.
SUBSTITUTIONS = (
    (b'"NaN"', b"NaN"),
    (b'"Infinity"', b"Infinity"),
    (b'"-Infinity"', b"-Infinity"),
    (b"-1.7976931348623157e+308", b"-Infinity"),
    (b"1.7976931348623157e+308", b"Infinity"),
)


@dataclass
class NanProxy:
    url: str
    substituted: set[bytes]


@pytest.fixture
def nan_speaking_server(mlflow_server: str) -> Iterator[NanProxy]:  # noqa: F811
    """The MLflow server behind a proxy that sends its NaN and infinite metric values as the
    JSON tokens ``NaN`` / ``Infinity`` (as Python's json and other servers write them) instead
    of MLflow's quoted strings and clamped floats."""

    substituted: set[bytes] = set()  # what the proxy did rewrite (the test checks it did)

    class Proxy(http.server.BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
            upstream = httpx.request(
                self.command, mlflow_server + self.path, content=body, headers=headers, timeout=30
            )
            content = upstream.content
            if "runs/get" in self.path:
                for quoted, token in SUBSTITUTIONS:
                    if quoted in content:
                        substituted.add(quoted)
                        content = content.replace(quoted, token)
            self.send_response(upstream.status_code)
            self.send_header("Content-Type", upstream.headers.get("content-type", "text/plain"))
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = _forward

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield NanProxy(f"http://127.0.0.1:{httpd.server_address[1]}", substituted)
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.integration  # a real server: mlflow_server
def test_model_info_leaves_out_metrics_that_are_not_numbers(
    mlflow_server: str,  # noqa: F811
    nan_speaking_server: NanProxy,
    model_sources: ModelSources,
) -> None:
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server)
    try:
        with mlflow.start_run() as run:
            mlflow.log_metrics(
                {"test_accuracy": 0.93, "lr_nan": math.nan, "up": math.inf, "down": -math.inf}
            )
            log_onnx(MlflowClient(mlflow_server), run.info.run_id, constant_model(0))
            mlflow.log_text("metadata:\n  flip_tta: true\n", "model/MLmodel")
            model_uri = mlflow.get_artifact_uri("model")
    finally:
        mlflow.set_tracking_uri(previous)
    registry = Registry(
        mlflow_server, "served", MlflowClient(mlflow_server, mlflow_server), model_sources
    )
    registry.promote(registry.add_source(model_uri, run.info.run_id, "tshirt"))
    with TestClient(create_app(make_config(nan_speaking_server.url, "served"))) as client:
        wait_until(lambda: client.get("/ready").status_code == 200)
        answer = client.get("/model")
    assert answer.status_code == 200, answer.text
    metrics = answer.json()["metrics"]
    assert metrics["test_accuracy"] == 0.93
    assert all(math.isfinite(v) for v in metrics.values())
    assert "lr_nan" not in metrics
    assert "up" not in metrics and "down" not in metrics
    # The app did read the bare tokens: the proxy rewrote a NaN and both infinities.
    assert b'"NaN"' in nan_speaking_server.substituted
    assert {b"-1.7976931348623157e+308", b"1.7976931348623157e+308"} <= (
        nan_speaking_server.substituted
    ) or {b'"Infinity"', b'"-Infinity"'} <= nan_speaking_server.substituted
