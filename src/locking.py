"""A cross-process file lock: serialises registry changes and ``data/`` swaps on one machine.

Prefect's global concurrency limits serialise flows that talk to one Prefect server; runs
without a server (``make train`` in two shells, each with its own ephemeral API) only share the
file system, so the lock that always holds there is an ``flock`` on a file beside the registry.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

POLL_S = 0.05


class LockTimeout(TimeoutError):
    """The lock stayed taken for longer than allowed; the message names the holder."""


@contextmanager
def file_lock(
    path: Path, timeout_s: float = 3600.0, what: str = "this operation"
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    The kernel drops the lock when the holder dies, so a crashed run never leaves it taken.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
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
