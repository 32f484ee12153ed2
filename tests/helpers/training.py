"""Helpers for the training tests (fixtures are in tests/training/conftest.py)."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import numpy as np

from src.config import AppConfig, load_config
from src.data.split import PreparedData
from tests.helpers.mlflow_db import new_sqlite_store


def tiny_prepared(dataset_path: Path) -> PreparedData:
    return PreparedData.from_file(dataset_path, data_md5="tiny-md5", split_hash="tiny-split")


def read_idx_prefix(folder: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(folder / "train-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(16 + count * 784), np.uint8, offset=16)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(8 + count), np.uint8, offset=8)
    return images.reshape(-1, 28, 28).copy(), labels.astype(np.int64)


# The smallest network of the default family: these tests are about the training machinery
# (modes, budget, resume, logging), not accuracy; 48-96-192 made them 5x slower.
TINY_NETWORK = {"widths": [8, 16, 32]}


def tiny_config(root: Path, **train: object) -> AppConfig:
    """The smoke profile on a tiny network, with its runs and checkpoints under ``root`` (and an
    empty MLflow store there, made by copying: see tests.helpers.mlflow_db)."""
    tracking_uri = new_sqlite_store(root / "mlflow.db")
    return load_config(
        profile="smoke",
        environ={},
        overrides={
            "paths": {"root": str(root)},
            "mlflow": {
                "tracking_uri": tracking_uri,
                "artifact_location": str(root / "mlartifacts"),
                "experiment_name": "tiny",
            },
            "train": {
                "max_epochs": 2,
                "batch_size": 64,
                "progress_bar": False,
                **TINY_NETWORK,
                **train,
            },
        },
    )


def committed_git_repo(root: Path) -> str:
    """Make ``root`` a git repository with one commit (what the run's git_commit tag should
    name); returns that commit."""
    git = ["git", "-C", str(root), "-c", "user.name=tests", "-c", "user.email=tests@localhost"]
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([*git, "init", "-q"], check=True, timeout=30)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "tiny"], check=True, timeout=30)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, timeout=30, capture_output=True, text=True
    )
    return head.stdout.strip()
