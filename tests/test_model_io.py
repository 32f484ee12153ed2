"""A trained model is logged twice: the pt2 model (evaluation, in trusted processes) and the ONNX
file the API serves. Both take any batch size and give the network's own probabilities; only the
ONNX file is data without pickles, which is why it is the one that is served."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import torch
from mlflow.tracking import MlflowClient

from src.labels import CLASS_NAMES
from src.model_io import load_classifier, log_classifier, log_onnx
from src.onnx_model import ONNX_MODEL_ARTIFACT, load_onnx_classifier

PICKLE_PROTOCOL_2_PLUS = b"\x80"  # every pickle since protocol 2 starts with PROTO


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


def _pickles_in(archive: zipfile.ZipFile) -> list[str]:
    """Members that are pickles, looking inside nested archives (``torch.save`` writes a zip
    whose ``data.pkl`` is the pickle)."""
    found = []
    for name in archive.namelist():
        data = archive.read(name)
        if data[:1] == PICKLE_PROTOCOL_2_PLUS or name.endswith(".pkl"):
            found.append(name)
        elif zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                found += [f"{name}/{member}" for member in _pickles_in(inner)]
    return found


def _expected(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(images), dim=1).numpy()


@pytest.fixture
def logged(tmp_path: Path) -> tuple[torch.nn.Module, str, Path]:
    """(model, pt2 model URI, local copy of the run's ONNX file)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("io", artifact_location=(tmp_path / "art").as_uri())
    model = _tiny_model()
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = log_classifier(model, metadata={"note": "test"})
    log_onnx(client, run.info.run_id, model)
    onnx_file = Path(client.download_artifacts(run.info.run_id, ONNX_MODEL_ARTIFACT, str(tmp_path)))
    return model, info.model_uri, onnx_file


def test_pt2_model_round_trips_with_any_batch_size(
    logged: tuple[torch.nn.Module, str, Path],
) -> None:
    model, model_uri, _ = logged
    classifier = load_classifier(model_uri)
    assert classifier.class_names == list(CLASS_NAMES)
    assert classifier.metadata["note"] == "test"
    for batch in (1, 5, 33):
        images = torch.randn(batch, 1, 28, 28)
        probabilities = classifier.predict_proba(images)
        np.testing.assert_allclose(probabilities, _expected(model, images), rtol=1e-4, atol=1e-6)


def test_served_onnx_file_gives_the_same_answers(logged: tuple[torch.nn.Module, str, Path]) -> None:
    model, _, onnx_file = logged
    served = load_onnx_classifier(onnx_file.read_bytes(), CLASS_NAMES, threads=1)
    for batch in (1, 5, 33):
        images = torch.randn(batch, 1, 28, 28)
        probabilities = served.predict_proba(images.numpy())
        np.testing.assert_allclose(probabilities, _expected(model, images), rtol=1e-4, atol=1e-5)


def test_only_the_served_file_is_free_of_pickles(logged: tuple[torch.nn.Module, str, Path]) -> None:
    _, model_uri, onnx_file = logged
    model_dir = Path(mlflow.artifacts.download_artifacts(model_uri))
    [archive] = model_dir.rglob("*.pt2")
    with zipfile.ZipFile(archive) as pt2:
        pickled = _pickles_in(pt2)
    # The pt2 archive carries pickles that torch.export.load unpickles: never served.
    assert pickled, "expected MLflow's pt2 archive to hold a pickled member"
    # The ONNX file is one protobuf message: no archive members, no pickle, a valid graph.
    data = onnx_file.read_bytes()
    assert data[:1] != PICKLE_PROTOCOL_2_PLUS and not zipfile.is_zipfile(onnx_file)
    onnx.checker.check_model(onnx.load_from_string(data))
