"""MLflow's own server runs what the registry holds: ``mlflow models serve -m
models:/NAME@production --env-manager local`` answers ``/invocations`` through ONNX Runtime, no
pickle is loaded in any of its processes, and its classes are the API's on real images."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest
import torch
import yaml

from src.data.io import read_idx
from src.model_io import log_classifier
from src.preprocessing import normalize_array
from tests.helpers.api import Registry, encode, free_port, wait_until

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
N_IMAGES = 192
# Loaded through PYTHONPATH into every Python process the server starts, it records with the
# process id: each class an unpickler built on pickle's own find_class loads, each file opened in
# a pickle-based format (torch's loaders override find_class, so their pickles are seen by the
# file they read and by the import of torch), and each import of ONNX Runtime or torch.
AUDIT_HOOK = """
import os, sys
_LOG = os.environ.get("AUDIT_LOG")
_PICKLED = (".pkl", ".pickle", ".pt", ".pt2", ".pth", ".ckpt", ".joblib")

def _write(line):
    with open(_LOG, "a") as log:
        log.write(f"{os.getpid()} {line}\\n")

def _hook(event, args):
    if event == "pickle.find_class":
        _write(f"pickle {args[0]}.{args[1]}")
    elif event == "open" and isinstance(args[0], str) and args[0].endswith(_PICKLED):
        _write(f"pickle file {args[0]}")
    elif event == "import" and args[0] in ("onnxruntime", "torch"):
        _write(f"import {args[0]}")

if _LOG:
    sys.addaudithook(_hook)
"""


def _real_images(shared_data_dir: Path) -> np.ndarray:
    """Real Fashion-MNIST images the model was not built from (the file's last ones)."""
    images, _ = read_idx(
        shared_data_dir / "train-images-idx3-ubyte.gz",
        shared_data_dir / "train-labels-idx1-ubyte.gz",
    )
    return images[-N_IMAGES:]


@pytest.fixture
def mlflow_server(registry: Registry, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``mlflow models serve`` of ``registry``'s Production on 127.0.0.1; (url, audit log)."""
    hook_dir = tmp_path / "audit"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(AUDIT_HOOK)
    audit_log = tmp_path / "audit.log"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_TRACKING_URI": registry.tracking_uri,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # its `uvicorn`
        "PYTHONPATH": str(hook_dir),
        "AUDIT_LOG": str(audit_log),
    }
    log_path = tmp_path / "mlflow-serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{registry.name}@production",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def pinged() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"mlflow models serve exited:\n{log_path.read_text()[-3000:]}")
        try:
            return httpx.get(url + "/ping", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(pinged, timeout=180, interval=0.2)
        yield url, audit_log
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the CLI and the uvicorn it started
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _api_labels(server_url: str, images: np.ndarray) -> list[str]:
    labels: list[str] = []
    for start in range(0, len(images), 32):
        files = [
            ("files", (f"{i}.png", encode(image), "image/png"))
            for i, image in enumerate(images[start : start + 32])
        ]
        answer = httpx.post(server_url + "/predict/batch", files=files, timeout=60)
        assert answer.status_code == 200, answer.text
        labels += [item["label"] for item in answer.json()]
    return labels


@pytest.mark.timeout(420)
def test_mlflow_serves_the_registered_onnx_graph_with_the_apis_classes(
    registry: Registry,
    server_factory: Any,
    mlflow_server: tuple[str, Path],
    shared_data_dir: Path,
) -> None:
    url, audit_log = mlflow_server
    images = _real_images(shared_data_dir)
    answer = httpx.post(
        url + "/invocations", json={"inputs": normalize_array(images).tolist()}, timeout=120
    )
    assert answer.status_code == 200, answer.text
    audit = audit_log.read_text().splitlines()
    assert not [line for line in audit if " pickle " in line or " import torch" in line], audit
    assert any(line.endswith(" import onnxruntime") for line in audit), audit
    logits = np.asarray(answer.json()["predictions"]["logits"])
    assert logits.shape == (N_IMAGES, 10)
    # The class names a user reads in the served version's MLmodel.
    location = registry.client.get_model_version_download_uri(registry.name, "1")
    mlmodel = yaml.safe_load((Path(location[len("file://") :]) / "MLmodel").read_text())
    names = mlmodel["metadata"]["class_names"]
    from_mlflow = [names[i] for i in logits.argmax(axis=1)]
    assert len(set(from_mlflow)) >= 6  # the answers depend on the images

    api = server_factory(registry.tracking_uri, registry.name)
    assert _api_labels(api.url, images) == from_mlflow


def _nearest_mean_model(shared_data_dir: Path) -> torch.nn.Module:
    """A linear nearest-class-mean classifier of real images: its answers are real garments'
    classes, many of them (a random network answers two or three classes on real images)."""
    images, labels = read_idx(
        shared_data_dir / "train-images-idx3-ubyte.gz",
        shared_data_dir / "train-labels-idx1-ubyte.gz",
    )
    flat = normalize_array(images[:5000]).reshape(5000, -1)
    means = np.stack([flat[labels[:5000] == c].mean(axis=0) for c in range(10)])
    linear = torch.nn.Linear(flat.shape[1], 10)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(means))
        linear.bias.copy_(torch.from_numpy(-0.5 * (means**2).sum(axis=1)))
    return torch.nn.Sequential(torch.nn.Flatten(), linear).eval()


@pytest.fixture
def registry(registry: Registry, shared_data_dir: Path) -> Registry:
    """The nearest-mean model, logged as the trainer logs a model, as Production (v1)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry.tracking_uri)
    try:
        experiment = registry.client.get_experiment_by_name("api-tests")
        assert experiment is not None
        with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
            info = log_classifier(_nearest_mean_model(shared_data_dir))
        source = mlflow.get_logged_model(info.model_id).artifact_location
    finally:
        mlflow.set_tracking_uri(previous)
    registry.promote(registry.add_source(source, run.info.run_id, "nearest-mean"))
    return registry
