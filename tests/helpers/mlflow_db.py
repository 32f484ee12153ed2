"""New MLflow sqlite stores for tests, copied from one made once per process: MLflow's schema
migrations take ~5 s for every new database, a copy of a migrated empty one milliseconds.

Only for tests that need a store, not its creation (tests/test_registry_schema.py creates its own).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path


@cache
def _migrated_empty_db() -> Path:
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # runs the migrations
    return path


def new_sqlite_store(path: Path) -> str:
    """An empty, migrated MLflow database at ``path`` (unless one is there already); its URI."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_migrated_empty_db(), path)
    return f"sqlite:///{path}"
