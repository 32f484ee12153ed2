"""Whoever can write to the registry must not run code in the API: model versions built as an
attacker would are registered and promoted while a real server runs. The payload never runs:
a version whose files carry a payload beside a genuine ONNX model is served from the ONNX model
alone; one that cannot be served (no ONNX model, a fake or oversized one) is refused, the previous
version keeps serving, and /ready and /model say which version failed and why."""

from __future__ import annotations

import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
import torch

from src.model_io import MODEL_ARTIFACT_NAME
from src.onnx_model import ONNX_MODEL_ARTIFACT
from src.serving.model_store import MAX_MLMODEL_BYTES
from tests.helpers.api import Registry, constant_model, encode, sample_images, wait_until
from tests.helpers.legacy_models import log_pt2_classifier
from tests.helpers.onnx_graphs import add_onnx_version

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


def _onnx_of(registry: Registry, which: str, folder: Path) -> Path:
    """A copy of the genuine ONNX model a session model logged (``which``: tshirt, sneaker...)."""
    source = Path(getattr(registry.sources, which).uri[len("file://") :]) / "model.onnx"
    copy = folder / which / "model.onnx"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, copy)
    return copy


def _with_genuine_onnx(registry: Registry, workdir: Path, log: Callable[[], str]) -> Any:
    """``log`` into the run, plus the sneaker model's genuine ONNX file where the API reads it
    for a version without an onnx flavour (the run's ``onnx/model.onnx``, as versions registered
    before kept it): the version loads, so the API gets as far as it ever goes with the
    attacker's files."""
    onnx = _onnx_of(registry, "sneaker", workdir)

    def both() -> str:
        uri = log()
        mlflow.log_artifact(str(onnx), artifact_path=ONNX_MODEL_ARTIFACT.rsplit("/", 1)[0])
        return uri

    return both


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
    """A pt2 model folder (as versions were registered before the onnx flavour) with its pickled
    member replaced by a payload."""
    info = log_pt2_classifier(constant_model(0))
    source = Path(mlflow.get_logged_model(info.model_id).artifact_location[len("file://") :])
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


def _assert_served_from_onnx_only(server_url: str, version: str, marker: Path) -> None:
    """``version`` serves (the sneaker ONNX model answers) and its payload never ran."""

    def serving() -> Any:
        assert not marker.exists(), "the payload in the registered model ran inside the API"
        body = httpx.get(server_url + "/ready", timeout=5).json()
        return body.get("model_version") == version and body

    wait_until(serving, timeout=60)
    answer = httpx.post(
        server_url + "/predict", files={"file": ("x.png", GOOD_PNG, "image/png")}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["label"], answer.json()["model_version"]) == ("Sneaker", version)
    assert not marker.exists(), "the payload in the registered model ran inside the API"


def _assert_planted_payload_runs(planted: bytes, marker: Path) -> None:
    """The positive control: the bytes planted in the registered model do run code when
    unpickled, so the marker's absence while serving means nothing unpickled them."""
    assert not marker.exists()
    pickle.loads(planted)  # the test's own payload, here on purpose
    assert marker.read_text() == "payload ran"


def _pt2_pickled_member(model_folder: Path) -> bytes:
    with zipfile.ZipFile(model_folder / "data" / "model.pt2") as archive:
        [member] = [n for n in archive.namelist() if n.endswith("sample_inputs/model.pt")]
        return archive.read(member)


@pytest.mark.integration  # a real server: server_factory
def test_a_pickle_flavour_version_never_runs_code(
    registry: Registry, server_factory: Any, tmp_path: Path
) -> None:
    registry.add_production("tshirt")
    server = server_factory(registry.tracking_uri, registry.name, SERVE_POLL_INTERVAL_S="0.2")
    marker = tmp_path / "pwned"
    log = _with_genuine_onnx(registry, tmp_path, lambda: _pickle_flavour_model(marker))
    uri, run_id = _new_run_with(registry, log)
    assert not marker.exists()  # logging it ran nothing
    registry.promote(registry.add_source(uri, run_id, "pickle"))
    _assert_served_from_onnx_only(server.url, "2", marker)
    _assert_planted_payload_runs(
        (Path(uri[len("file://") :]) / "data" / "model.pth").read_bytes(), marker
    )


@pytest.mark.integration  # a real server: server_factory
def test_a_pt2_copy_with_a_payload_member_never_runs_code(
    registry: Registry, server_factory: Any, tmp_path: Path
) -> None:
    registry.add_production("tshirt")
    server = server_factory(registry.tracking_uri, registry.name, SERVE_POLL_INTERVAL_S="0.2")
    marker = tmp_path / "pwned"
    log = _with_genuine_onnx(
        registry, tmp_path, lambda: _tampered_pt2_copy(registry, marker, tmp_path)
    )
    uri, run_id = _new_run_with(registry, log)
    registry.promote(registry.add_source(uri, run_id, "pt2-payload"))
    _assert_served_from_onnx_only(server.url, "2", marker)
    _assert_planted_payload_runs(_pt2_pickled_member(Path(uri[len("file://") :])), marker)


def _model_folder_with_mlmodel(registry: Registry, workdir: Path, mlmodel: str) -> str:
    """Production's model folder with its MLmodel replaced by ``mlmodel`` (which declares no onnx
    flavour, so the run's genuine ONNX file is served), logged as ``model``."""
    source = Path(registry.client.get_model_version_download_uri(registry.name, "1")[7:])
    copy = workdir / "forged"
    shutil.copytree(source, copy)
    (copy / "MLmodel").write_text(mlmodel)
    mlflow.log_artifacts(str(copy), artifact_path="model")
    return mlflow.get_artifact_uri("model")


@pytest.mark.integration  # a real server: server_factory
def test_an_mlmodel_yaml_payload_never_runs_code(
    registry: Registry, server_factory: Any, tmp_path: Path
) -> None:
    """MLmodel is the one attacker-written file the API parses (YAML): a tag that constructs a
    Python object runs code under an unsafe loader."""
    registry.add_production("tshirt")
    server = server_factory(registry.tracking_uri, registry.name, SERVE_POLL_INTERVAL_S="0.2")
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('payload ran')"
    mlmodel = (
        "artifact_path: model\n"
        f'metadata: !!python/object/apply:builtins.exec ["{code}"]\n'
        f'flavors: !!python/object/apply:builtins.exec ["{code}"]\n'
    )
    log = _with_genuine_onnx(
        registry, tmp_path, lambda: _model_folder_with_mlmodel(registry, tmp_path, mlmodel)
    )
    uri, run_id = _new_run_with(registry, log)
    registry.promote(registry.add_source(uri, run_id, "yaml-payload"))
    _assert_served_from_onnx_only(server.url, "2", marker)


@pytest.mark.integration  # a real server: server_factory
def test_an_oversized_mlmodel_is_not_read(
    registry: Registry, server_factory: Any, tmp_path: Path
) -> None:
    """An MLmodel over the cap is not parsed (its class names would rename every answer); the
    ONNX model still serves, with the project's class names."""
    registry.add_production("tshirt")
    server = server_factory(registry.tracking_uri, registry.name, SERVE_POLL_INTERVAL_S="0.2")
    names = [f"forged-{i}" for i in range(10)]
    padding = "#" * 120 + "\n"
    mlmodel = (
        padding * (MAX_MLMODEL_BYTES // len(padding) + 1)
        + f"artifact_path: model\nmetadata:\n  class_names: {names}\n"
    )
    assert len(mlmodel) > MAX_MLMODEL_BYTES
    log = _with_genuine_onnx(
        registry, tmp_path, lambda: _model_folder_with_mlmodel(registry, tmp_path, mlmodel)
    )
    uri, run_id = _new_run_with(registry, log)
    registry.promote(registry.add_source(uri, run_id, "big-mlmodel"))
    _assert_served_from_onnx_only(server.url, "2", tmp_path / "no-payload")
    model = httpx.get(server.url + "/model", timeout=5).json()
    assert "forged-7" not in str(model)


@pytest.mark.integration  # a real server: server_factory
def test_an_mlmodel_under_the_cap_is_read(
    registry: Registry, server_factory: Any, tmp_path: Path
) -> None:
    """The control for the test above: the same forged class names in a small MLmodel are read
    (so the cap, not a parse failure, is what kept the big one out)."""
    registry.add_production("tshirt")
    server = server_factory(registry.tracking_uri, registry.name, SERVE_POLL_INTERVAL_S="0.2")
    names = [f"forged-{i}" for i in range(10)]
    mlmodel = f"artifact_path: model\nmetadata:\n  class_names: {names}\n"
    log = _with_genuine_onnx(
        registry, tmp_path, lambda: _model_folder_with_mlmodel(registry, tmp_path, mlmodel)
    )
    uri, run_id = _new_run_with(registry, log)
    registry.promote(registry.add_source(uri, run_id, "small-mlmodel"))
    wait_until(
        lambda: httpx.get(server.url + "/ready", timeout=5).json().get("model_version") == "2",
        timeout=60,
    )
    answer = httpx.post(
        server.url + "/predict", files={"file": ("x.png", GOOD_PNG, "image/png")}, timeout=10
    )
    assert answer.json()["label"] == "forged-7"


@pytest.mark.integration  # a real server: server_factory
def test_an_onnx_model_over_max_model_bytes_is_refused(
    registry: Registry, server_factory: Any, tmp_path: Path
) -> None:
    """``serve.max_model_bytes`` bounds the model file the API reads: the small image-dependent
    model fits, the larger linear one is refused and the small one keeps serving."""
    small = _onnx_of(registry, "varied", tmp_path).stat().st_size
    large = _onnx_of(registry, "tshirt", tmp_path).stat().st_size
    assert small < large
    registry.add_production("varied")
    server = server_factory(
        registry.tracking_uri,
        registry.name,
        SERVE_POLL_INTERVAL_S="0.2",
        SERVE_MAX_MODEL_BYTES=str(small),
    )
    registry.promote(registry.add_version("tshirt"))

    def reported() -> Any:
        body = httpx.get(server.url + "/ready", timeout=5).json()
        return "Production v2 failed to load" in body.get("reason", "") and body

    body = wait_until(reported, timeout=60)
    assert body["status"] == "ready" and body["model_version"] == "1"
    model = httpx.get(server.url + "/model", timeout=5).json()
    assert model["version"] == "1" and model["production_version"] == "2"
    assert f"over the {small} limit" in model["load_error"], model["load_error"]


@pytest.mark.integration  # a real server: server_factory
@pytest.mark.parametrize("where", ["onnx flavor", "run file"])
def test_an_onnx_file_that_is_a_pickle_is_refused(
    registry: Registry, server_factory: Any, tmp_path: Path, where: str
) -> None:
    """The pickle poses as the version's own model.onnx (onnx flavour), or as the run's
    onnx/model.onnx of a version without one (as pt2 versions registered before)."""
    registry.add_production("tshirt")
    server = server_factory(registry.tracking_uri, registry.name, SERVE_POLL_INTERVAL_S="0.2")
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Payload(marker), protocol=2)
    if where == "onnx flavor":
        registry.promote(add_onnx_version(registry, payload, "fake-onnx"))
    else:
        fake = tmp_path / "onnx" / "model.onnx"
        fake.parent.mkdir()
        fake.write_bytes(payload)

        def log() -> str:
            mlflow.log_artifact(str(fake), artifact_path="onnx")
            return mlflow.get_artifact_uri("onnx")  # a folder with no MLmodel: no onnx flavor

        uri, run_id = _new_run_with(registry, log)
        registry.promote(registry.add_source(uri, run_id, "fake-onnx"))
    _assert_attack_contained(server.url, "2", marker, registry)
