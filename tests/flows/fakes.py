"""Stand-ins for the data and training steps, for flow tests that exercise only the model half."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from src.config import AppConfig
from src.labels import NUM_CLASSES
from src.model_io import log_classifier
from src.preprocessing import normalize


class Memorizer(torch.nn.Module):
    """A nearest-neighbour "model" that knows the given images by heart: a perfect champion on
    them. Exportable with torch.export, so it goes through the real log/register/load path."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        super().__init__()
        flat = normalize(images).reshape(len(images), -1)
        self.register_buffer("memory", flat)
        self.register_buffer("sqnorm", (flat * flat).sum(1))
        self.register_buffer("labels", torch.as_tensor(labels, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        distance = self.sqnorm.unsqueeze(0) - 2 * flat @ self.memory.T
        nearest = self.labels[distance.argmin(dim=1)]
        return torch.nn.functional.one_hot(nearest, NUM_CLASSES).to(x.dtype) * 10.0


class Constant(torch.nn.Module):
    """Always answers ``label``: about 10 % accurate."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.tensor(label), 10) * 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (
            self.logits.unsqueeze(0).expand(x.shape[0], -1) + 0 * x.reshape(x.shape[0], -1)[:, :10]
        )


@dataclass
class FakePrepared:
    dataset_path: Path
    split_hash: str
    data_md5: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class FakeTrainResult:
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    test_predictions_path: Path


def write_dataset(path: Path, n_test: int = 200, seed: int = 0) -> FakePrepared:
    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {}
    for part, n in (("train", 50), ("val", 50), ("test", n_test)):
        arrays[f"x_{part}"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"y_{part}"] = (np.arange(n) % NUM_CLASSES).astype(np.int64)
    np.savez(path, **arrays)
    return FakePrepared(path, split_hash=f"split-{seed}-{n_test}", data_md5=f"md5-{seed}")


def log_model_run(cfg: AppConfig, model: torch.nn.Module) -> FakeTrainResult:
    from src.training.train import ensure_experiment

    # The configured artifact location, never ./mlruns in the working directory.
    experiment_id = ensure_experiment(cfg)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = log_classifier(model)
    return FakeTrainResult(run.info.run_id, info.model_uri, {"test_accuracy": 0.0}, Path("-"))
