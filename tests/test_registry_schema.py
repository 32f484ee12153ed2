"""A brand-new sqlite registry's schema is created by one process at a time."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from src import registry
from src.locking import file_lock


def _tables(db: Path) -> set[str]:
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_the_first_client_of_a_new_registry_creates_the_schema_under_the_lock(
    tmp_path: Path,
) -> None:
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    done = threading.Event()
    errors: list[BaseException] = []

    def first_use() -> None:
        try:
            registry.get_client(uri).search_experiments()
        except BaseException as exc:  # reported by the assertions below
            errors.append(exc)
        done.set()

    # Another process is creating the schema: it holds the lock beside the database.
    with file_lock(Path(f"{db}.schema.lock"), timeout_s=5):
        worker = threading.Thread(target=first_use, daemon=True)
        worker.start()
        # Long enough for MLflow to create the tables were it not waiting (a few seconds).
        assert not done.wait(8.0), "get_client did not wait for the schema lock"
        assert "experiments" not in _tables(db)
    assert done.wait(120) and not errors, errors
    assert {"experiments", "registered_models", "model_versions"} <= _tables(db)
    # Ready at once for this process from then on, lock or no lock.
    with file_lock(Path(f"{db}.schema.lock"), timeout_s=5):
        assert registry.get_client(uri).search_experiments()
