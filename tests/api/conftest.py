"""Fixtures for the API tests: a temporary sqlite MLflow registry with tiny models, the app in
process (TestClient), and real uvicorn processes on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.api import (
    ModelSources,
    Registry,
    Server,
    registry_names,
    start_server,
    stop_server,
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
