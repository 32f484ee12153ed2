"""Helpers for the flows tests (fixtures are in tests/flows/conftest.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from src.labels import CLASS_NAMES
from tests.helpers.mlflow_db import new_sqlite_store
from tests.helpers.training import TINY_NETWORK

BIN = Path(sys.executable).parent


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


@contextmanager
def open_tiny_store(root: Path) -> Iterator[TinyStore]:
    """A sqlite MLflow store under ``root`` holding one logged tiny model (and its ONNX form)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from src.model_io import log_classifier, log_onnx
    from tests.helpers.mlflow_db import new_sqlite_store

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


# --- a real Prefect server on 127.0.0.1 for the flow and deployment tests -----------------------

QUIET_ENV = {
    # Never phone home from tests.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_UI_ENABLED": "false",
}


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    home: Path
    env: dict[str, str]


def api_post(api_url: str, path: str, body: dict[str, Any]) -> Any:
    """POST to the Prefect REST API (filters) and return the decoded JSON."""
    import httpx

    response = httpx.post(f"{api_url}/{path.lstrip('/')}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def flow_run_artifacts(api_url: str, flow_run_id: str) -> dict[str, dict[str, Any]]:
    """The artifacts a flow run (and its tasks) created, by key."""
    found = api_post(
        api_url, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    )
    return {item["key"]: item for item in found if item.get("key")}


def task_run_states(api_url: str, flow_run_id: str) -> dict[str, str]:
    """Task run name prefix (``download_task-0`` → ``download_task``) → state name."""
    found = api_post(api_url, "task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    return {item["name"].rsplit("-", 1)[0]: item["state"]["name"] for item in found}


# --- tiny real data and a throw-away project root ----------------------------------------------

TINY_PER_CLASS = 100  # 1,000 real images: a 700/150/150 split


@dataclass(frozen=True)
class TinySources:
    good: Path  # 100 real images per class (IDX gz)
    bad: Path  # the same with labels out of range


def project_env(root: Path, source: Path) -> dict[str, str]:
    """Settings that keep a train-flow run inside ``root`` (never the repo's data/ or mlflow.db)."""
    return {
        **QUIET_ENV,
        "PATHS_ROOT": str(root),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        "MLFLOW_ARTIFACT_LOCATION": str(root / "mlartifacts"),
        "DATA_SOURCE": str(source),
        "DATA_MIN_ROWS": "500",
        "DATA_MAX_ROWS": "2000",
        "DATA_DVC_REMOTE_URL": str(root.parent / "dvc-remote"),
        "DATA_TASK_RETRY_DELAY_S": "0",
        "DATA_RETRY_DELAY_S": "0",
        "TRAIN_PROGRESS_BAR": "false",
        "TRAIN_WIDTHS": json.dumps(TINY_NETWORK["widths"]),  # what the flow does, not accuracy
    }


def make_project(root: Path) -> Path:
    """An empty DVC project folder (what a fresh clone has), with its local remote beside it."""
    from src.data.versioning import init_repo

    root.mkdir(parents=True, exist_ok=True)
    init_repo(root, "local", str(root.parent / "dvc-remote"))
    return root


def use_project(root: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project at ``root`` reading data from ``source``, its settings in the environment
    (and no profile from the caller's), for the length of a test."""
    make_project(root)
    new_sqlite_store(root / "mlflow.db")  # project_env's MLFLOW_TRACKING_URI, schema made
    for key, value in project_env(root, source).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PROFILE", raising=False)
    return root
