"""Fixtures for the API tests: a temporary sqlite MLflow registry with tiny models, the app in
process (TestClient), and real uvicorn processes on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from src.model_io import log_classifier, log_onnx
from tests.helpers.api import (
    LoggedModel,
    ModelSources,
    Registry,
    Server,
    constant_model,
    image_dependent_model,
    registry_names,
    start_server,
    stop_server,
)


@pytest.fixture(scope="session")
def model_sources(tmp_path_factory: pytest.TempPathFactory) -> ModelSources:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("api-tests", artifact_location=(root / "art").as_uri())
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    logged: dict[str, LoggedModel] = {}
    varied = image_dependent_model()
    for key, module in (
        ("tshirt", constant_model(0)),
        ("sneaker", constant_model(7)),
        ("bag", constant_model(8)),
        ("varied", varied),
    ):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_params({"data_md5": f"md5-{key}"})
            mlflow.log_metrics({"test_accuracy": 0.91, "test_macro_f1": 0.9})
            info = log_classifier(module)
            log_onnx(client, run.info.run_id, module)  # the served form, as the trainer logs it
        # The artifact location, not ``models:/m-...``: resolving a logged-model id would go
        # through MLflow's process-global tracking URI.
        location = mlflow.get_logged_model(info.model_id).artifact_location
        logged[key] = LoggedModel(uri=location, run_id=run.info.run_id)
    mlflow.set_tracking_uri(previous_uri)  # leave the process-global URI as it was
    return ModelSources(
        uri, logged["tshirt"], logged["sneaker"], logged["bag"], logged["varied"], varied
    )


@pytest.fixture
def registry(model_sources: ModelSources) -> Registry:
    uri = model_sources.tracking_uri
    return Registry(
        tracking_uri=uri,
        name=f"clf-{os.getpid()}-{next(registry_names)}",
        client=MlflowClient(tracking_uri=uri, registry_uri=uri),
        sources=model_sources,
    )


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Server] = []

    def factory(tracking_uri: str, name: str, **kwargs: Any) -> Server:
        server = start_server(tmp_path, tracking_uri, name, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        stop_server(server)
