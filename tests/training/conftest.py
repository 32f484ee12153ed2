"""A tiny prepared split of real Fashion-MNIST images and one tiny training run shared by the tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from src.config import AppConfig, load_config
from src.data.split import PreparedData


def tiny_prepared(dataset_path: Path) -> PreparedData:
    return PreparedData.from_file(dataset_path, data_md5="tiny-md5", split_hash="tiny-split")


def _read_idx(folder: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(folder / "train-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(16 + count * 784), np.uint8, offset=16)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(8 + count), np.uint8, offset=8)
    return images.reshape(-1, 28, 28).copy(), labels.astype(np.int64)


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    images, labels = _read_idx(shared_data_dir, 896)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(
        path,
        x_train=images[:512],
        y_train=labels[:512],
        x_val=images[512:704],
        y_val=labels[512:704],
        x_test=images[704:],
        y_test=labels[704:],
    )
    return path


def tiny_config(root: Path, **train: object) -> AppConfig:
    return load_config(
        profile="smoke",
        environ={},
        overrides={
            "paths": {"root": str(root)},
            "mlflow": {
                "tracking_uri": f"sqlite:///{root}/mlflow.db",
                "artifact_location": str(root / "mlartifacts"),
                "experiment_name": "tiny",
            },
            "train": {"max_epochs": 2, "batch_size": 64, "progress_bar": False, **train},
        },
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_npz: Path) -> tuple[object, AppConfig]:
    from src.training import train_model

    root = tmp_path_factory.mktemp("project")
    cfg = tiny_config(root, ema_decay=0.9)  # also exercises the EMA callback path
    return train_model(tiny_prepared(tiny_npz), cfg), cfg
