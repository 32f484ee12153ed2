"""A cross-process file lock: serialises registry changes and ``data/`` swaps on one machine.

Prefect's global concurrency limits serialise flows that talk to one Prefect server; runs
without a server (``make train`` in two shells, each with its own ephemeral API) only share the
file system, so the lock that always holds there is an ``flock`` on a file beside the registry.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

POLL_S = 0.05


class LockTimeout(TimeoutError):
    """The lock stayed taken for longer than allowed; the message names the holder."""


class LockFileError(OSError):
    """The lock path is not a plain file of its own (a symlink or hard link was planted there)."""


def _open_lock_file(path: Path) -> int:
    """Open (or create) the lock file itself: never through a symlink, never a file with other
    names, and without truncating anything before the lock is held."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if path.is_symlink():
            raise LockFileError(
                f"The lock file {path} is a symlink (to {os.readlink(path)}); refusing to follow "
                "it. Remove the link, then try again."
            ) from exc
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise LockFileError(
            f"The lock file {path} is not a plain file of its own ({info.st_nlink} links); "
            "refusing to write to it. Remove it, then try again."
        )
    return fd


@contextmanager
def file_lock(
    path: Path, timeout_s: float = 3600.0, what: str = "this operation"
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    The kernel drops the lock when the holder dies, so a crashed run never leaves it taken.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(_open_lock_file(path), "r+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read(64).strip() or "unknown"
                    raise LockTimeout(
                        f"Waited {timeout_s:.0f} s for the lock {path} ({what}); it is held by "
                        f"process {holder}. Let that run finish (or stop it), then try again."
                    ) from None
                time.sleep(POLL_S)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
