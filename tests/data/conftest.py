"""Tiny Fashion-MNIST-shaped data sets made in the test, and a matching DataConfig."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from src.config.data import DataConfig
from tests.helpers.config import data_config
from tests.helpers.data import (
    N_PER_CLASS,
    make_images,
    tiny_config,
    git,
    make_dvc_project,
    tree_snapshot,
)


@pytest.fixture
def tiny() -> tuple[np.ndarray, np.ndarray]:
    return make_images()


@pytest.fixture
def cfg() -> DataConfig:
    return tiny_config()


@pytest.fixture
def dvc_project(tmp_path: Path) -> tuple[Path, Path]:
    return make_dvc_project(tmp_path)
