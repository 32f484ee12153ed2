"""The API's light registry reader against the real thing: an embedded sqlite registry (file
replaced by a restore) and a real ``mlflow server`` with ``--serve-artifacts``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from src.model_io import log_onnx
from src.serving.model_store import ModelStore
from src.serving.redact import redact_text, redact_uri
from tests.helpers.api import ModelSources, Registry, constant_model, free_port, wait_until


def _store(uri: str, name: str) -> ModelStore:
    return ModelStore(uri, name, poll_interval_s=0.1, retry_interval_s=0.1, load_backoff_s=60)


def test_a_replaced_sqlite_registry_file_is_seen_at_the_next_poll(
    model_sources: ModelSources, tmp_path: Path
) -> None:
    """Restoring the registry from a backup replaces the file: the old inode must not be read."""
    db = tmp_path / "live.db"  # a copy of the session registry, so no other test sees the swap
    shutil.copy(Path(model_sources.tracking_uri[len("sqlite:///") :]), db)
    live = Registry(f"sqlite:///{db}", "restored", MlflowClient(f"sqlite:///{db}"), model_sources)
    live.add_production("tshirt")
    store = _store(live.tracking_uri, live.name)
    assert store.check_once() and store.current is not None and store.current.version == "1"
    # The restored file gets a promotion that the replaced (deleted) file never sees.
    restored = tmp_path / "restored.db"
    shutil.copy(db, restored)
    other = Registry(
        f"sqlite:///{restored}", "restored", MlflowClient(f"sqlite:///{restored}"), model_sources
    )
    other.promote(other.add_version("sneaker"))
    os.replace(restored, db)
    assert store.check_once(), store.status.reason
    assert store.current is not None and store.current.version == "2"
    assert store.current.class_names[int(store.current.predict_proba(_zeros()).argmax())] == (
        "Sneaker"
    )


def _zeros() -> np.ndarray:
    return np.zeros((1, 1, 28, 28), dtype=np.float32)


def test_a_version_that_failed_to_load_is_retried_with_back_off(registry: Registry) -> None:
    registry.add_production("tshirt")
    store = _store(registry.tracking_uri, registry.name)
    store.check_once()
    registry.promote(registry.add_source("file:///nonexistent", None, "broken"))
    loads: list[str] = []
    original = store.load
    store.load = lambda ref, reader=None: (loads.append(ref.version), original(ref, reader))[1]  # type: ignore[method-assign]
    for _ in range(5):
        store.check_once()
    assert loads == ["2"], "a failed version must not be reloaded at every poll"
    assert store.status.reason.startswith("serving v1; Production v2 failed to load:")


def test_uris_are_redacted() -> None:
    uri = "http://alice:s3cret@mlflow.example:5000/path?token=abc&x=1&X-Amz-Signature=zz"
    redacted = redact_uri(uri)
    assert "s3cret" not in redacted and "alice" not in redacted and "abc" not in redacted
    assert "zz" not in redacted and "mlflow.example:5000/path" in redacted and "x=1" in redacted
    text = redact_text(f"cannot reach {uri} (refused)")
    assert "s3cret" not in text and "abc" not in text and "refused" in text


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-2000:]
        try:
            return httpx.get(url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=120, interval=0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.mark.integration  # a real server: mlflow_server
def test_loads_production_from_an_mlflow_server_through_its_artifact_proxy(
    mlflow_server: str, model_sources: ModelSources
) -> None:
    """Versions whose artifacts live at mlflow-artifacts:/... are fetched through the server."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server)
    try:
        with mlflow.start_run() as run:
            mlflow.log_metric("test_accuracy", 0.93)
            log_onnx(MlflowClient(mlflow_server), run.info.run_id, constant_model(0))
            mlflow.log_text("metadata:\n  flip_tta: true\n", "model/MLmodel")
            model_uri = mlflow.get_artifact_uri("model")
    finally:
        mlflow.set_tracking_uri(previous)
    assert model_uri.startswith("mlflow-artifacts:")
    registry = Registry(
        mlflow_server, "served", MlflowClient(mlflow_server, mlflow_server), model_sources
    )
    registry.promote(registry.add_source(model_uri, run.info.run_id, "tshirt"))
    store = _store(mlflow_server, "served")
    assert store.check_once(), store.status.reason
    model = store.current
    assert model is not None and model.version == "1" and model.flip_tta is True
    assert model.metrics["test_accuracy"] == pytest.approx(0.93)
    assert model.predict_proba(_zeros()).argmax() == 0


def test_an_unsupported_tracking_uri_is_named_without_its_secret() -> None:
    from src.serving.registry_reader import RegistryReadError, reader_for

    with pytest.raises(RegistryReadError, match="sqlite:/// or http") as caught:
        reader_for("postgresql://bob:hunter2@db.internal/mlflow")
    assert "hunter2" not in str(caught.value) and "db.internal" in str(caught.value)


def test_http_credentials_become_an_authorization_header_not_part_of_the_url() -> None:
    from src.serving.registry_reader import HttpRegistry

    reader = HttpRegistry("https://alice:s3cret@mlflow.example:8443/base/")
    assert reader.base == "https://mlflow.example:8443/base"
    assert reader.headers["Authorization"].startswith("Basic ")
