"""Fixtures for the flow, gate and registry tests: a throw-away MLflow store and tiny models."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch

from src.labels import CLASS_NAMES
from src.model_io import log_classifier

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


# --- a real Prefect server on 127.0.0.1 for the flow and deployment tests -----------------------

QUIET_ENV = {
    # Never phone home from tests.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_UI_ENABLED": "false",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    home: Path
    env: dict[str, str]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """``prefect server start`` with a temporary PREFECT_HOME; stopped after the session."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        **QUIET_ENV,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"Prefect server did not start; see {home / 'server.log'}:\n"
                    + (home / "server.log").read_text()[-2000:]
                )
            time.sleep(0.3)
        yield PrefectServer(api_url=api_url, home=home, env=env)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def prefect_api(prefect_server: PrefectServer) -> Iterator[str]:
    """Point in-process flows at the test server (not the user's ~/.prefect), as Prefect's own
    ``prefect_test_harness`` does, and flush the log/event workers before leaving."""
    import prefect.context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}),
        prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()),
    ):
        try:
            yield prefect_server.api_url
        finally:
            with contextlib.suppress(RuntimeError):
                APILogWorker.drain_all()
            EventsWorker.drain_all()


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


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> TinySources:
    """Small IDX sources cut from the real Fashion-MNIST files."""
    import numpy as np

    from src.data.io import read_images, write_idx

    images, labels = read_images(shared_data_dir)
    picks = np.sort(
        np.concatenate([np.flatnonzero(labels == c)[:TINY_PER_CLASS] for c in range(10)])
    )
    root = tmp_path_factory.mktemp("sources")
    write_idx(root / "good", images[picks], labels[picks])
    broken = labels[picks].copy()
    broken[[3, 141, 592]] = 12  # no such class
    write_idx(root / "bad", images[picks], broken)
    return TinySources(root / "good", root / "bad")


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
    }


def make_project(root: Path) -> Path:
    """An empty DVC project folder (what a fresh clone has), with its local remote beside it."""
    from src.data.versioning import init_repo

    root.mkdir(parents=True, exist_ok=True)
    init_repo(root, "local", str(root.parent / "dvc-remote"))
    return root
