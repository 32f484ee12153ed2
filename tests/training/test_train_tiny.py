"""One tiny real training run (512 images, 2 epochs): loss falls, everything reaches MLflow."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
import pytest
import torch

from src.config import AppConfig
from src.labels import CLASS_NAMES
from src.model_io import load_classifier
from src.training.train import TrainResult


@pytest.fixture(scope="module")
def run(tiny_run: tuple[TrainResult, AppConfig]) -> tuple[TrainResult, AppConfig, Any]:
    result, cfg = tiny_run
    mlflow.set_tracking_uri(cfg.tracking_uri)
    return result, cfg, mlflow.MlflowClient()


@pytest.mark.integration  # real data: shared_data_dir
def test_loss_falls(run: tuple[TrainResult, AppConfig, Any]) -> None:
    result, _, client = run
    history = client.get_metric_history(result.run_id, "train_loss_epoch")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) == 2
    assert losses[1] < losses[0]


@pytest.mark.integration  # real data: shared_data_dir
def test_metrics_params_tags_reach_mlflow(run: tuple[TrainResult, AppConfig, Any]) -> None:
    result, cfg, client = run
    data = client.get_run(result.run_id).data
    for key in ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1", "test_f1_shirt"):
        assert key in data.metrics
        assert 0.0 <= data.metrics[key] <= 1.0
        assert data.metrics[key] == pytest.approx(result.metrics[key])
    assert data.params["network"] == cfg.train.network
    assert data.params["widths"] == "-".join(map(str, cfg.train.widths))
    assert int(data.params["num_parameters"]) > 0 and float(data.params["mmacs_per_view"]) > 0
    assert data.params["chosen_precision"] in ("32-true", "bf16-mixed")
    assert data.params["precision_reason"]
    # The smoke profile is reproducible: precision by the device's capability, no timing.
    assert "not timed" in data.params["precision_reason"]
    assert data.params["n_train"] == "512"
    assert data.tags["data_md5"] == "tiny-md5"
    assert data.tags["split_hash"] == "tiny-split"
    head = subprocess.run(
        ["git", "-C", str(cfg.paths.root), "rev-parse", "HEAD"],
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
    )
    assert data.tags["git_commit"] == head.stdout.strip()  # the run's files are untracked


@pytest.mark.integration  # real data: shared_data_dir
def test_artifacts_reach_mlflow(run: tuple[TrainResult, AppConfig, Any]) -> None:
    result, _, client = run
    names = {a.path for a in client.list_artifacts(result.run_id, "figures")}
    assert names == {
        "figures/confusion_matrix.png",
        "figures/learning_curves.png",
        "figures/misclassified_test.png",
    }
    # The model is the ONNX graph the API serves (onnx flavour), not a pickled format.
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=result.model_uri))
    assert not list(model_dir.rglob("*.pt2")) and not list(model_dir.rglob("*.pth"))
    onnx_model = onnx.load(str(model_dir / "model.onnx"))
    onnx.checker.check_model(onnx_model)
    batch_dim = onnx_model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param, "ONNX batch dimension must be dynamic"


@pytest.mark.integration  # real data: shared_data_dir
def test_test_predictions_file(run: tuple[TrainResult, AppConfig, Any], tiny_npz: Path) -> None:
    result, _, _ = run
    predictions = np.load(result.test_predictions_path)
    with np.load(tiny_npz) as data:
        labels = data["y_test"]
    assert predictions.shape == labels.shape
    assert float((predictions == labels).mean()) == pytest.approx(result.metrics["test_accuracy"])


@pytest.mark.integration  # real data: shared_data_dir
def test_logged_model_loads_and_predicts_any_batch(
    run: tuple[TrainResult, AppConfig, Any], tiny_npz: Path
) -> None:
    result, _, _ = run
    classifier = load_classifier(result.model_uri)
    assert classifier.class_names == list(CLASS_NAMES)
    assert classifier.metadata["flip_tta"] is True
    for batch in (1, 7):
        probabilities = classifier.predict_proba(torch.randn(batch, 1, 28, 28))
        assert probabilities.shape == (batch, 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # The logged (served) model reproduces the run's test predictions.
    from src.evaluate import evaluate_classifier

    evaluation = evaluate_classifier(classifier, tiny_npz, "test")
    np.testing.assert_array_equal(evaluation.predictions, np.load(result.test_predictions_path))
