"""Helpers for the edge tests (tests/api/test_edge_signals.py, tests/services/test_edge.py)."""

from __future__ import annotations

import mlflow

from tests.helpers.api import Registry


def broken_version(registry: Registry) -> str:
    """A version whose ``onnx/model.onnx`` is not an ONNX model (it fails to load)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry.tracking_uri)
    try:
        experiment = registry.client.get_experiment_by_name("api-tests")
        assert experiment is not None
        with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
            mlflow.log_text("not an ONNX model", "onnx/model.onnx")
            uri = mlflow.get_artifact_uri("onnx")
        return registry.add_source(uri, run.info.run_id, "broken")
    finally:
        mlflow.set_tracking_uri(previous)
