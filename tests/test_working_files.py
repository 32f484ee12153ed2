"""The guard in tests/conftest.py: any change to a user's working files is seen, what was
already there is not a change."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.working_files import differences, snapshot


def _checkout_after_make_train(root: Path) -> None:
    (root / "outputs" / "checkpoints" / "run").mkdir(parents=True)
    (root / "outputs" / "checkpoints" / "run" / "last.ckpt").write_bytes(b"weights")
    (root / "mlflow.db").write_bytes(b"registry")
    (root / "data").mkdir()
    (root / "data" / "train-images-idx3-ubyte.gz").write_bytes(b"images")
    (root / "src").mkdir()  # not a working file


def test_existing_working_files_left_alone_are_no_difference(tmp_path: Path) -> None:
    _checkout_after_make_train(tmp_path)
    before = snapshot(tmp_path)
    assert "outputs/checkpoints/run/last.ckpt" in before and "mlflow.db" in before
    (tmp_path / "src" / "new.py").write_text("x = 1\n")  # outside the working files
    assert differences(before, snapshot(tmp_path)) == []


def test_every_kind_of_change_is_seen(tmp_path: Path) -> None:
    _checkout_after_make_train(tmp_path)
    before = snapshot(tmp_path)
    (tmp_path / "outputs" / "monitoring").mkdir()
    (tmp_path / "outputs" / "monitoring" / "predictions.db").write_bytes(b"rows")
    (tmp_path / "data" / "train-images-idx3-ubyte.gz").unlink()
    (tmp_path / "mlartifacts").mkdir()
    checkpoint = tmp_path / "outputs" / "checkpoints" / "run" / "last.ckpt"
    stamp = checkpoint.stat()
    checkpoint.write_bytes(b"WEIGHTS")  # same size, new content
    os.utime(checkpoint, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1))
    registry = tmp_path / "mlflow.db"
    registry.write_bytes(b"registry, one more row")
    assert differences(before, snapshot(tmp_path)) == [
        "removed data/train-images-idx3-ubyte.gz",
        "added mlartifacts",
        "changed mlflow.db",
        "changed outputs/checkpoints/run/last.ckpt",
        "added outputs/monitoring",
        "added outputs/monitoring/predictions.db",
    ]
