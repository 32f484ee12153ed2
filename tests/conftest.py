"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT.parent / "shared" / "fashion-mnist").resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real Fashion-MNIST training files beside the repo (``../shared/fashion-mnist``)."""
    if not (SHARED_DATA / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"The real data is missing: expected {SHARED_DATA}/train-images-idx3-ubyte.gz")
    return SHARED_DATA
