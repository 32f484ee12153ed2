"""``/model`` answers 200 when the run's metrics from an MLflow server hold NaN or infinities."""

from __future__ import annotations

import math

import mlflow
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from src.api import create_app
from src.model_io import log_onnx
from tests.api.test_registry_reader import mlflow_server  # noqa: F401  (fixture)
from tests.helpers.api import ModelSources, Registry, constant_model, make_config, wait_until


def test_model_info_leaves_out_metrics_that_are_not_numbers(
    mlflow_server: str,  # noqa: F811
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
    with TestClient(create_app(make_config(mlflow_server, "served"))) as client:
        wait_until(lambda: client.get("/ready").status_code == 200)
        answer = client.get("/model")
    assert answer.status_code == 200, answer.text
    metrics = answer.json()["metrics"]
    assert metrics["test_accuracy"] == 0.93
    assert all(math.isfinite(v) for v in metrics.values())
    assert "lr_nan" not in metrics
