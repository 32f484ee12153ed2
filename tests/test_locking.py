"""The file lock writes only its own lock file: never through a planted symlink or hard link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from src.locking import LockFileError, LockTimeout, file_lock


def _planted(tmp_path: Path) -> tuple[Path, Path]:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    lock = tmp_path / "locks" / "mlflow.db.lock"
    lock.parent.mkdir()
    return target, lock


def test_a_symlink_planted_at_the_lock_path_is_refused_and_its_target_kept(
    tmp_path: Path,
) -> None:
    target, lock = _planted(tmp_path)
    lock.symlink_to(target)
    with pytest.raises(LockFileError, match=r"is a symlink .*Remove the link"), file_lock(lock, 1):
        pass
    assert target.read_text() == "keep me"


def test_a_hard_link_planted_at_the_lock_path_is_refused_and_its_target_kept(
    tmp_path: Path,
) -> None:
    target, lock = _planted(tmp_path)
    os.link(target, lock)
    with pytest.raises(LockFileError, match="not a plain file of its own"), file_lock(lock, 1):
        pass
    assert target.read_text() == "keep me"


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / "a.lock"
    with file_lock(lock, timeout_s=1):
        assert lock.read_text() == str(os.getpid())
        # flock is per open file: a second open in this process waits like another process.
        with (
            pytest.raises(LockTimeout, match=f"held by process {os.getpid()}"),
            file_lock(lock, timeout_s=0.2),
        ):
            pass
    with file_lock(lock, timeout_s=1):
        pass
