"""A trained model is logged as what the API serves: MLflow's onnx flavour, whose ``model.onnx`` is
the graph ONNX Runtime runs and whose MLmodel tells a reader the class names, the preprocessing
and the input signature. It takes any batch size, gives the network's own probabilities, holds no
pickle, and MLflow's own loader runs it as docs/serving.md shows."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import torch
import yaml

from src import registry
from src.labels import CLASS_NAMES
from src.model_io import export_onnx, load_classifier, log_classifier
from src.preprocessing import MEAN, STD
from src.served_model import NoServableModel
from src.serving.model_store import ModelStore
from src.serving.registry_reader import reader_for
from tests.helpers.legacy_models import log_pt2_classifier

PICKLE_PROTOCOL_2_PLUS = b"\x80"  # every pickle since protocol 2 starts with PROTO
NAME = "io"


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, len(CLASS_NAMES)),
    ).eval()


def _expected(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(images), dim=1).numpy()


class Logged:
    """A sqlite registry with one version (Production) of a logged tiny model."""

    def __init__(self, root: Path) -> None:
        self.uri = f"sqlite:///{root}/mlflow.db"
        self.client = registry.get_client(self.uri)
        self.model = _tiny_model()
        self.experiment = mlflow.create_experiment("io", artifact_location=(root / "a").as_uri())
        with mlflow.start_run(experiment_id=self.experiment) as run:
            self.info = log_classifier(self.model, metadata={"note": "test"})
        self.run_id = run.info.run_id
        self.version = self.register(self.info.model_uri, self.run_id, promote=True)
        self.folder = Path(
            self.client.get_model_version_download_uri(NAME, self.version)[len("file://") :]
        )

    def register(self, model_uri: str, run_id: str, *, promote: bool = False) -> str:
        mv = registry.register_candidate(
            self.client, NAME, model_uri=model_uri, run_id=run_id, tags={}
        )
        if promote:
            registry.record_gate_decision(self.client, NAME, mv.version, passed=True, reasons=[])
            registry.promote(self.client, NAME, mv.version)
        return str(mv.version)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    """One registry for the module (its first version stays the one the tests read)."""
    root = tmp_path_factory.mktemp("model-io")
    # The tracking URI only (the registry follows it): restoring a registry URI read back with
    # get_registry_uri() would pin the relative default, and its MLFLOW_REGISTRY_URI variable, for
    # every later test and server of this process (they wrote the repo's own mlflow.db).
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    try:
        yield Logged(root)
    finally:
        mlflow.set_tracking_uri(previous)


def test_the_registered_version_is_an_onnx_model_a_user_can_read(logged: Logged) -> None:
    mlmodel = yaml.safe_load((logged.folder / "MLmodel").read_text())
    assert set(mlmodel["flavors"]) == {"onnx", "python_function"}
    assert mlmodel["flavors"]["onnx"]["data"] == "model.onnx"
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "mlflow.onnx"
    metadata = mlmodel["metadata"]
    assert metadata["class_names"] == list(CLASS_NAMES) and metadata["note"] == "test"
    assert (metadata["normalize_mean"], metadata["normalize_std"]) == (MEAN, STD)
    assert "pixel / 255" in metadata["input"] and "argmax" in metadata["output"]
    [inputs] = json.loads(mlmodel["signature"]["inputs"])
    [outputs] = json.loads(mlmodel["signature"]["outputs"])
    assert (inputs["name"], inputs["tensor-spec"]) == (
        "images",
        {"dtype": "float32", "shape": [-1, 1, 28, 28]},
    )
    assert (outputs["name"], outputs["tensor-spec"]["shape"]) == ("logits", [-1, 10])
    graph = onnx.load_model_from_string((logged.folder / "model.onnx").read_bytes())
    assert [i.name for i in graph.graph.input] == ["images"]


def test_the_version_holds_no_pickle(logged: Logged) -> None:
    files = sorted(p for p in logged.folder.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"MLmodel", "model.onnx"}
    for path in files:
        data = path.read_bytes()
        assert data[:1] != PICKLE_PROTOCOL_2_PLUS, f"{path.name} is a pickle"
        assert not zipfile.is_zipfile(io.BytesIO(data)), f"{path.name} is an archive"
        assert path.suffix in (".onnx", ".json", ".yaml", ".txt", ""), path.name
    onnx.checker.check_model(
        onnx.load_model_from_string((logged.folder / "model.onnx").read_bytes())
    )


def test_the_api_serves_the_registered_file_byte_for_byte(logged: Logged, tmp_path: Path) -> None:
    """The API's loader reads the version's own model.onnx: the file the trainer exported."""
    exported = export_onnx(logged.model, tmp_path / "exported.onnx").read_bytes()
    registered = (logged.folder / "model.onnx").read_bytes()
    assert registered == exported
    store = ModelStore(logged.uri, NAME, poll_interval_s=60, retry_interval_s=1)
    ref = reader_for(logged.uri).production(NAME)
    assert ref is not None
    loaded = store.load(ref)
    assert loaded.served_file == "model.onnx (onnx flavor)"
    assert loaded.model_sha256 == hashlib.sha256(registered).hexdigest()
    assert loaded.class_names == list(CLASS_NAMES)


def test_loaded_back_it_gives_the_networks_answers_at_any_batch_size(logged: Logged) -> None:
    classifier = load_classifier(f"models:/{NAME}@production", logged.uri)
    assert classifier.class_names == list(CLASS_NAMES)
    assert classifier.metadata["served_file"] == "model.onnx (onnx flavor)"
    for batch in (1, 5, 33):
        images = torch.randn(batch, 1, 28, 28)
        probabilities = classifier.predict_proba(images.numpy())
        np.testing.assert_allclose(probabilities, _expected(logged.model, images), atol=1e-5)


def test_mlflow_pyfunc_loads_it_as_the_docs_show(logged: Logged) -> None:
    """docs/serving.md: ``mlflow.pyfunc.load_model`` → ``predict(images)["logits"]``."""
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@production")
    images = torch.randn(3, 1, 28, 28)
    logits = model.predict(images.numpy())["logits"]
    with torch.no_grad():
        np.testing.assert_allclose(logits, logged.model(images).numpy(), atol=1e-4)
    class_names = model.metadata.metadata["class_names"]
    assert [class_names[i] for i in logits.argmax(axis=1)] == [
        CLASS_NAMES[i] for i in _expected(logged.model, images).argmax(axis=1)
    ]


def test_a_pt2_version_registered_before_is_served_from_its_runs_onnx_file(
    logged: Logged,
) -> None:
    from src.model_io import log_onnx

    other = _tiny_model()
    torch.nn.init.normal_(other[-1].weight)
    with mlflow.start_run(experiment_id=logged.experiment) as run:
        info = log_pt2_classifier(other)
    log_onnx(logged.client, run.info.run_id, other)
    version = logged.register(info.model_uri, run.info.run_id)
    classifier = load_classifier(f"models:/{NAME}/{version}", logged.uri)
    assert classifier.metadata["served_file"].startswith("run artifact onnx/model.onnx")
    images = torch.randn(4, 1, 28, 28)
    np.testing.assert_allclose(
        classifier.predict_proba(images.numpy()), _expected(other, images), atol=1e-5
    )


def test_a_pt2_version_without_an_onnx_file_is_refused_in_one_line(logged: Logged) -> None:
    with mlflow.start_run(experiment_id=logged.experiment) as run:
        info = log_pt2_classifier(_tiny_model())
    version = logged.register(info.model_uri, run.info.run_id)
    with pytest.raises(NoServableModel) as refused:
        load_classifier(f"models:/{NAME}/{version}", logged.uri)
    message = str(refused.value)
    assert "\n" not in message
    assert "not an ONNX model (python_function/pytorch)" in message
    assert "register a model logged by `make train`" in message
