"""A brand-new sqlite registry's schema is created by one process at a time."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

from src import registry
from src.locking import file_lock


def _tables(db: Path) -> set[str]:
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _open_handles(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return count


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

    lock = Path(f"{db}.schema.lock")
    # Another process is creating the schema: it holds the lock beside the database.
    with file_lock(lock, timeout_s=5):
        worker = threading.Thread(target=first_use, daemon=True)
        worker.start()
        # The worker opening the lock file (a second handle beside ours) means it is trying to
        # take the lock; it cannot have it while this block holds it.
        deadline = time.monotonic() + 120
        while _open_handles(lock) < 2:
            assert not done.is_set(), "get_client finished without trying the schema lock"
            assert time.monotonic() < deadline, "get_client never tried the schema lock"
            time.sleep(0.01)
        assert not done.is_set() and "experiments" not in _tables(db)
    assert done.wait(120) and not errors, errors
    assert {"experiments", "registered_models", "model_versions"} <= _tables(db)
    # Ready at once for this process from then on, lock or no lock.
    with file_lock(Path(f"{db}.schema.lock"), timeout_s=5):
        assert registry.get_client(uri).search_experiments()
