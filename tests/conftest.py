"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.working_files import WORKING_FILES, differences, snapshot

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT.parent / "shared" / "fashion-mnist").resolve()


@pytest.fixture(scope="session", autouse=True)
def users_working_files_untouched() -> Iterator[None]:
    """The session errors if any test added, changed or removed anything under the repo's
    outputs/, mlflow.db, mlartifacts/ or data/ (what ``make train`` left there stays as it was)."""
    before = snapshot(REPO_ROOT)
    yield
    changed = differences(before, snapshot(REPO_ROOT))
    if changed:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if changed[10:] else "")
        pytest.fail(
            f"the tests changed the repo's working files ({'/'.join(WORKING_FILES)}): {shown}; "
            "point the test at tmp_path (PATHS_ROOT, MONITOR_STORE_URL, MLFLOW_TRACKING_URI).",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real Fashion-MNIST training files beside the repo (``../shared/fashion-mnist``)."""
    if not (SHARED_DATA / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"The real data is missing: expected {SHARED_DATA}/train-images-idx3-ubyte.gz")
    return SHARED_DATA
