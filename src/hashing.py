"""The md5 of a file, as DVC and the published Fashion-MNIST checksums compute it."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    """Hex md5 of the file's bytes, read in chunks (the raw data files are tens of MB)."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
