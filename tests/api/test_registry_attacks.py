"""Whoever can write to the registry must not run code in the API: model versions built as an
attacker would are registered and promoted while a real server runs. The payload never runs, the
previous version keeps serving, and /ready and /model say which version failed and why."""

from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import httpx
import mlflow
import torch

from src.model_io import MODEL_ARTIFACT_NAME
from tests.helpers.api import Registry, encode, sample_images, wait_until

GOOD_PNG = encode(sample_images(1)[0])


class Payload:
    """Unpickling this writes ``marker`` (stands for any code an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",))


def _new_run_with(registry: Registry, log: Any) -> tuple[str, str]:
    """Run ``log(run_artifact_dir)`` in a new run of the test experiment; (model uri, run id)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry.tracking_uri)
    try:
        with mlflow.start_run(experiment_id=_experiment_id(registry)) as run:
            uri = log()
        return uri, run.info.run_id
    finally:
        mlflow.set_tracking_uri(previous)


def _experiment_id(registry: Registry) -> str:
    experiment = registry.client.get_experiment_by_name("api-tests")
    assert experiment is not None
    return str(experiment.experiment_id)


def _pickle_flavour_model(marker: Path) -> Any:
    """An MLflow pickle-flavour PyTorch model whose pickled module is a payload."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    info = mlflow.pytorch.log_model(model, name=MODEL_ARTIFACT_NAME, serialization_format="pickle")
    location = mlflow.get_logged_model(info.model_id).artifact_location
    pickled = list(Path(location[len("file://") :]).glob("data/model.pth"))
    assert pickled, "no pickled module in the pickle-flavour model"
    pickled[0].write_bytes(pickle.dumps(Payload(marker), protocol=2))
    return location


def _tampered_pt2_copy(registry: Registry, marker: Path, workdir: Path) -> Any:
    """Production's own pt2 model folder with its pickled member replaced by a payload."""
    source = Path(registry.client.get_model_version_download_uri(registry.name, "1")[7:])
    copy = workdir / "tampered"
    shutil.copytree(source, copy)
    archive = copy / "data" / "model.pt2"
    members = {}
    with zipfile.ZipFile(archive) as original:
        for name in original.namelist():
            members[name] = original.read(name)
    pickled = [name for name in members if name.endswith("sample_inputs/model.pt")]
    assert pickled, f"no pickled member in {sorted(members)}"
    members[pickled[0]] = pickle.dumps(Payload(marker), protocol=2)
    with zipfile.ZipFile(archive, "w") as rewritten:
        for name, data in members.items():
            rewritten.writestr(name, data)
    mlflow.log_artifacts(str(copy), artifact_path="model")
    return mlflow.get_artifact_uri("model")


def _assert_attack_contained(
    server_url: str, version: str, marker: Path, registry: Registry
) -> None:
    def reported() -> Any:
        assert not marker.exists(), "the payload in the registered model ran inside the API"
        body = httpx.get(server_url + "/ready", timeout=5).json()
        return f"Production v{version} failed to load" in body.get("reason", "") and body

    body = wait_until(reported, timeout=60)
    assert body["status"] == "ready" and body["model_version"] == "1"
    assert body["reason"].startswith("serving v1;"), body
    model = httpx.get(server_url + "/model", timeout=5).json()
    assert model["version"] == "1" and model["production_version"] == version
    assert f"version {version}" in model["load_error"] and "ONNX" in model["load_error"]
    answer = httpx.post(
        server_url + "/predict", files={"file": ("x.png", GOOD_PNG, "image/png")}, timeout=10
    )
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    assert not marker.exists(), "the payload in the registered model ran inside the API"


def test_a_pickle_flavour_version_never_runs_code(
    registry: Registry, server_factory: Any, tmp_path: Path
) -> None:
    registry.add_production("tshirt")
    server = server_factory(registry.tracking_uri, registry.name, SERVE_POLL_INTERVAL_S="0.2")
    marker = tmp_path / "pwned"
    uri, run_id = _new_run_with(registry, lambda: _pickle_flavour_model(marker))
    assert not marker.exists()  # logging it ran nothing
    registry.promote(registry.add_source(uri, run_id, "pickle"))
    _assert_attack_contained(server.url, "2", marker, registry)


def test_a_pt2_copy_with_a_payload_member_never_runs_code(
    registry: Registry, server_factory: Any, tmp_path: Path
) -> None:
    registry.add_production("tshirt")
    server = server_factory(registry.tracking_uri, registry.name, SERVE_POLL_INTERVAL_S="0.2")
    marker = tmp_path / "pwned"
    uri, run_id = _new_run_with(registry, lambda: _tampered_pt2_copy(registry, marker, tmp_path))
    registry.promote(registry.add_source(uri, run_id, "pt2-payload"))
    _assert_attack_contained(server.url, "2", marker, registry)


def test_an_onnx_file_that_is_a_pickle_is_refused(
    registry: Registry, server_factory: Any, tmp_path: Path
) -> None:
    registry.add_production("tshirt")
    server = server_factory(registry.tracking_uri, registry.name, SERVE_POLL_INTERVAL_S="0.2")
    marker = tmp_path / "pwned"
    fake = tmp_path / "onnx" / "model.onnx"
    fake.parent.mkdir()
    fake.write_bytes(pickle.dumps(Payload(marker), protocol=2))

    def log() -> str:
        mlflow.log_artifact(str(fake), artifact_path="onnx")
        return registry.sources.tshirt.uri

    uri, run_id = _new_run_with(registry, log)
    registry.promote(registry.add_source(uri, run_id, "fake-onnx"))
    _assert_attack_contained(server.url, "2", marker, registry)
