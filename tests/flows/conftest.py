"""Fixtures for the flow, gate and registry tests: a throw-away MLflow store and tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import mlflow
import pytest
import torch

from src.labels import CLASS_NAMES
from src.model_io import log_classifier


@dataclass(frozen=True)
class TinyStore:
    tracking_uri: str
    experiment_id: str
    model_uri: str
    run_id: str


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(28 * 28, len(CLASS_NAMES)),
    ).eval()


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyStore]:
    """A sqlite MLflow store in a temp dir holding one logged tiny model."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = mlflow.create_experiment(
            "registry-tests", artifact_location=(root / "artifacts").as_uri()
        )
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = log_classifier(tiny_model())
        yield TinyStore(uri, experiment_id, info.model_uri, run.info.run_id)
    finally:
        mlflow.set_tracking_uri(previous)
