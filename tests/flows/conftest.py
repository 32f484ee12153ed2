"""Fixtures for the flow, gate and registry tests: a throw-away MLflow store and tiny models."""

from __future__ import annotations

from collections.abc import Iterator

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from src.model_io import log_classifier, log_onnx
from tests.helpers.flows import (
    TinyStore,
    tiny_model,
)
from tests.helpers.mlflow_db import new_sqlite_store


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyStore]:
    """A sqlite MLflow store in a temp dir holding one logged tiny model."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = new_sqlite_store(root / "mlflow.db")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = mlflow.create_experiment(
            "registry-tests", artifact_location=(root / "artifacts").as_uri()
        )
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = log_classifier(tiny_model())
            log_onnx(MlflowClient(uri), run.info.run_id, tiny_model())  # the served form
        yield TinyStore(uri, experiment_id, info.model_uri, run.info.run_id)
    finally:
        mlflow.set_tracking_uri(previous)
