"""Helpers for the data tests (fixtures are in tests/data/conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from src.config.data import DataConfig
from tests.helpers.config import data_config

N_PER_CLASS = 20  # 200 images, 10% per class


def make_images(n_per_class: int = N_PER_CLASS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random distinct uint8 images with balanced labels (row order mixed)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10, dtype=np.int64), n_per_class)
    labels = labels[rng.permutation(len(labels))]
    images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    return images, labels


def tiny_config(**overrides: object) -> DataConfig:
    values: dict[str, object] = {
        "min_rows": 100,
        "max_rows": 1000,
        "download_retries": 2,
        "retry_delay_s": 0.0,
        "timeout_s": 5.0,
        "max_duplicate_fraction": 0.05,
    }
    values.update(overrides)
    return data_config(**values)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def make_dvc_project(base: Path) -> tuple[Path, Path]:
    """A real git + DVC repo under ``base`` with a local remote beside it: (root, remote)."""
    from src.data.versioning import init_repo

    root = base / "project"
    remote = base / "dvc-remote"
    root.mkdir()
    git(root, "init", "-q")
    init_repo(root, "local", "../dvc-remote")
    return root, remote


def tree_snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (empty if the folder is missing)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }
