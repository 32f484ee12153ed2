"""A tiny prepared split of real Fashion-MNIST images and one tiny training run shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src.config import AppConfig
from tests.helpers.training import (
    committed_git_repo,
    read_idx_prefix,
    tiny_config,
    tiny_prepared,
)


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> Path:
    images, labels = read_idx_prefix(shared_data_dir, 896)
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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_npz: Path) -> tuple[object, AppConfig]:
    from src.training.train import train_model

    root = tmp_path_factory.mktemp("project")
    committed_git_repo(root)  # the run's git_commit tag names its commit
    cfg = tiny_config(root, ema_decay=0.9)  # also exercises the EMA callback path
    return train_model(tiny_prepared(tiny_npz), cfg), cfg
