"""How many worker processes serve, and each one's share of the cores."""

from __future__ import annotations

import os

from src.config import ServeConfig


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(serve: ServeConfig) -> int:
    """``serve.workers``, or one worker process per usable core when it is 0."""
    return serve.workers or usable_cores()


def worker_cores(serve: ServeConfig) -> int:
    """The cores one worker may keep busy with forwards: its share when ``make serve`` started
    ``serve.workers`` of them (it exports the number), all of them in a lone process."""
    cores = usable_cores()
    return max(1, cores // serve.workers) if serve.workers else cores
