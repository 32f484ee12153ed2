"""The user's working files in the repo (``make train``'s outputs), which tests must leave alone."""

from __future__ import annotations

import stat
from pathlib import Path

# What `make train` and `make serve` write in a checkout (see README: working files).
WORKING_FILES = ("outputs", "mlflow.db", "mlartifacts", "data")

Snapshot = dict[str, tuple[int, int, int]]


def snapshot(root: Path, names: tuple[str, ...] = WORKING_FILES) -> Snapshot:
    """Every path under ``root``/``names`` with (type, size, mtime in ns); folders by type only,
    so a file added, removed, rewritten or touched shows as a difference."""
    state: Snapshot = {}
    for name in names:
        top = root / name
        if not (top.exists() or top.is_symlink()):
            continue
        paths = [top, *top.rglob("*")] if top.is_dir() and not top.is_symlink() else [top]
        for path in paths:
            try:
                info = path.lstat()
            except FileNotFoundError:  # removed while we walked: the next snapshot says so
                continue
            kind = stat.S_IFMT(info.st_mode)
            if stat.S_ISDIR(info.st_mode):
                state[path.relative_to(root).as_posix()] = (kind, 0, 0)
            else:
                state[path.relative_to(root).as_posix()] = (kind, info.st_size, info.st_mtime_ns)
    return state


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """'added x', 'removed y', 'changed z' for every path that differs, sorted by path."""
    found = []
    for path in sorted(set(before) | set(after)):
        if path not in before:
            found.append(f"added {path}")
        elif path not in after:
            found.append(f"removed {path}")
        elif before[path] != after[path]:
            found.append(f"changed {path}")
    return found
