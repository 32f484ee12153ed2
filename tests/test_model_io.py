"""A model logged with log_classifier loads back without pickles and takes any batch size."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch

from src.labels import CLASS_NAMES
from src.model_io import load_classifier, log_classifier


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, len(CLASS_NAMES)),
    )


def test_logged_model_round_trips_with_any_batch_size(tmp_path: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = mlflow.create_experiment("io", artifact_location=(tmp_path / "art").as_uri())
    model = _tiny_model().eval()
    with mlflow.start_run(experiment_id=experiment_id):
        info = log_classifier(model, metadata={"note": "test"})
    classifier = load_classifier(info.model_uri)
    assert classifier.class_names == list(CLASS_NAMES)
    assert classifier.metadata["note"] == "test"
    for batch in (1, 5, 33):
        images = torch.randn(batch, 1, 28, 28)
        probabilities = classifier.predict_proba(images)
        assert probabilities.shape == (batch, 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        with torch.no_grad():
            expected = torch.softmax(model(images), dim=1).numpy()
        np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
    model_dir = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert list(model_dir.rglob("*.pt2")), "expected the pickle-free pt2 format"
    assert not list(model_dir.rglob("*.pth"))
