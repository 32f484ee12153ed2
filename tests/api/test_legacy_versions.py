"""Versions registered before the onnx flavour (MLflow's pt2 PyTorch model, the ONNX graph in the
run's ``onnx/model.onnx``) still serve and roll back in a running API; one without that ONNX graph
is refused with a one-line reason while the previous version keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from src import registry as registry_ops
from src.model_io import log_onnx
from tests.helpers.api import Registry, constant_model, encode, sample_images, wait_until
from tests.helpers.legacy_models import log_pt2_classifier

pytestmark = pytest.mark.integration
PNG = encode(sample_images(1)[0])


def _pt2_version(registry: Registry, model: torch.nn.Module, label: str, *, onnx: bool) -> str:
    """Register ``model`` as versions were registered before: pt2 (+ the run's ONNX file)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry.tracking_uri)
    try:
        experiment = registry.client.get_experiment_by_name("api-tests")
        assert experiment is not None
        with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
            info = log_pt2_classifier(model)
        if onnx:
            log_onnx(MlflowClient(registry.tracking_uri), run.info.run_id, model)
        source = mlflow.get_logged_model(info.model_id).artifact_location
    finally:
        mlflow.set_tracking_uri(previous)
    return registry.add_source(source, run.info.run_id, label)


def _serving(url: str, version: str) -> Any:
    body = httpx.get(url + "/ready", timeout=5).json()
    return body.get("model_version") == version and body


def _label(url: str) -> tuple[str, str]:
    answer = httpx.post(url + "/predict", files={"file": ("x.png", PNG, "image/png")}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["label"], answer.json()["model_version"]


def test_a_pt2_version_registered_before_serves_and_is_rolled_back_to(
    registry: Registry, server_factory: Any
) -> None:
    old = _pt2_version(registry, constant_model(7), "sneaker-pt2", onnx=True)
    registry.promote(old)
    server = server_factory(registry.tracking_uri, registry.name, SERVE_POLL_INTERVAL_S="0.2")
    assert _label(server.url) == ("Sneaker", old)
    model = httpx.get(server.url + "/model", timeout=5).json()
    assert model["version"] == old

    new = registry.add_version("tshirt")  # onnx flavour, as the trainer logs it now
    registry.promote(new)
    wait_until(lambda: _serving(server.url, new), timeout=60)
    assert _label(server.url) == ("T-shirt/top", new)

    registry_ops.rollback(registry.client, registry.name, reason="test", to=old)
    wait_until(lambda: _serving(server.url, old), timeout=60)
    assert _label(server.url) == ("Sneaker", old)


def test_a_pt2_version_without_an_onnx_graph_is_refused_in_one_line(
    registry: Registry, server_factory: Any
) -> None:
    registry.add_production("tshirt")
    server = server_factory(registry.tracking_uri, registry.name, SERVE_POLL_INTERVAL_S="0.2")
    bare = _pt2_version(registry, constant_model(7), "pt2-only", onnx=False)
    registry.promote(bare)

    def refused() -> Any:
        body = httpx.get(server.url + "/ready", timeout=5).json()
        return f"Production v{bare} failed to load" in body.get("reason", "") and body

    body = wait_until(refused, timeout=60)
    assert body["model_version"] == "1" and "\n" not in body["reason"]
    assert "not an ONNX model (python_function/pytorch)" in body["reason"], body["reason"]
    assert "never a pickle or pt2" in body["reason"] and "make train" in body["reason"]
    assert _label(server.url) == ("T-shirt/top", "1")
