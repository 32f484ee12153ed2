"""Fixtures shared by every test package."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers.working_files import WORKING_FILES, differences, snapshot

if TYPE_CHECKING:  # the helpers import torch and MLflow: only the fixtures that need them do
    from tests.helpers.api import ModelSources
    from tests.helpers.flows import PrefectServer, TinySources, TinyStore

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT.parent / "shared" / "fashion-mnist").resolve()


@pytest.fixture(scope="session", autouse=True)
def users_working_files_untouched() -> Iterator[None]:
    """The session errors if any test added, changed or removed anything under the repo's
    outputs/, mlflow.db, mlartifacts/ or data/ (what ``make train`` left there stays as it was)."""
    before = snapshot(REPO_ROOT)
    yield
    changed = differences(before, snapshot(REPO_ROOT))
    if changed:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if changed[10:] else "")
        pytest.fail(
            f"the tests changed the repo's working files ({'/'.join(WORKING_FILES)}): {shown}; "
            "point the test at tmp_path (PATHS_ROOT, MONITOR_STORE_URL, MLFLOW_TRACKING_URI).",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real Fashion-MNIST training files beside the repo (``../shared/fashion-mnist``)."""
    if not (SHARED_DATA / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"The real data is missing: expected {SHARED_DATA}/train-images-idx3-ubyte.gz")
    return SHARED_DATA


# --- session fixtures of several packages: defined once here, so one instance serves them all
# (a fixture imported into another package's conftest is a second instance: a second server).


@pytest.fixture(scope="session")
def model_sources(tmp_path_factory: pytest.TempPathFactory) -> ModelSources:
    """A sqlite MLflow store holding four tiny logged models (the API tests' registry sources)."""
    import mlflow

    from src.model_io import log_classifier
    from tests.helpers.api import LoggedModel, ModelSources, constant_model, image_dependent_model
    from tests.helpers.mlflow_db import new_sqlite_store

    root = tmp_path_factory.mktemp("mlflow")
    uri = new_sqlite_store(root / "mlflow.db")
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("api-tests", artifact_location=(root / "art").as_uri())
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
        # The artifact location, not ``models:/m-...``: resolving a logged-model id would go
        # through MLflow's process-global tracking URI.
        location = mlflow.get_logged_model(info.model_id).artifact_location
        logged[key] = LoggedModel(uri=location, run_id=run.info.run_id)
    mlflow.set_tracking_uri(previous_uri)  # leave the process-global URI as it was
    return ModelSources(
        uri, logged["tshirt"], logged["sneaker"], logged["bag"], logged["varied"], varied
    )


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """``prefect server start`` with a temporary PREFECT_HOME; stopped after the session."""
    from tests.helpers.api import free_port
    from tests.helpers.flows import BIN, QUIET_ENV, PrefectServer

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        **QUIET_ENV,
        "PREFECT_SERVER_UI_ENABLED": "true",  # tests/deployments/test_prefect_deploy.py opens it
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


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> TinySources:
    """Small IDX sources cut from the real Fashion-MNIST files."""
    import numpy as np

    from src.data.io import read_images, write_idx
    from tests.helpers.flows import TINY_PER_CLASS, TinySources

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


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyStore]:
    """A sqlite MLflow store in a temp dir holding one logged tiny model (flow, gate, registry and
    promotion tests)."""
    from tests.helpers.flows import open_tiny_store

    with open_tiny_store(tmp_path_factory.mktemp("mlflow")) as store:
        yield store
