"""The evaluate function and CLI on a tiny prepared split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch

from src import cli
from src.config import AppConfig
from src.evaluate import evaluate_classifier, main, metric_key
from src.labels import CLASS_NAMES
from src.model_io import LoadedClassifier
from src.training.train import TrainResult


class _Oracle(torch.nn.Module):
    """Predicts class = round(mean pixel) % 10: deterministic, to check the scoring."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.int64), 10).float()


@pytest.mark.integration  # real data: shared_data_dir
def test_evaluate_classifier_scores(tiny_npz: Path) -> None:
    classifier = LoadedClassifier(module=_Oracle(), class_names=list(CLASS_NAMES))
    result = evaluate_classifier(classifier, tiny_npz, "val")
    with np.load(tiny_npz) as data:
        labels = data["y_val"]
    assert result.accuracy == pytest.approx(float((labels == 0).mean()))
    assert set(result.per_class_f1) == set(CLASS_NAMES)
    assert result.per_class_f1["Trouser"] == 0.0
    assert result.confusion.sum() == len(labels)
    assert "val_f1_t_shirt_top" in result.metrics()
    assert metric_key("T-shirt/top") == "t_shirt_top"


@pytest.mark.integration  # real data: shared_data_dir
def test_cli_run_id_prints_and_logs(
    tiny_run: tuple[TrainResult, AppConfig], tiny_npz: Path, capsys: Any, monkeypatch: Any
) -> None:
    result, cfg = tiny_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking_uri)
    assert main(["--run-id", result.run_id, "--dataset", str(tiny_npz)]) == 0
    out = capsys.readouterr().out
    assert "accuracy:" in out and "macro-F1:" in out and "Shirt" in out
    mlflow.set_tracking_uri(cfg.tracking_uri)
    logged = mlflow.MlflowClient().get_run(result.run_id).data.metrics
    assert logged["eval_test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])


@pytest.mark.integration  # real data: shared_data_dir
def test_cli_checkpoint(
    tiny_run: tuple[TrainResult, AppConfig], tiny_npz: Path, capsys: Any
) -> None:
    result, _ = tiny_run
    assert result.best_checkpoint is not None
    assert main(["--checkpoint", str(result.best_checkpoint), "--dataset", str(tiny_npz)]) == 0
    out = capsys.readouterr().out
    reported = float(out.split("accuracy: ")[1].split()[0])
    assert reported == pytest.approx(result.metrics["test_accuracy"], abs=1e-4)


def test_cli_errors_are_one_line(tmp_path: Path, capsys: Any) -> None:
    args = ["--checkpoint", str(tmp_path / "missing.ckpt"), "--dataset", "x.npz"]
    assert cli.call("evaluate", main, args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clothing-classifier evaluate: Checkpoint") and "\n" not in err
