"""A small ``.gz`` in a data folder that inflates to far more than its header declares is refused
after the header, without inflating it."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from src.data.io import DataFormatError, read_images, write_idx

INFLATED_MIB = 64


def _bomb(path: Path, header: bytes) -> None:
    """``header`` followed by 64 MiB of zeros, gzip-compressed to well under 1 MiB."""
    chunk = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(header)
        for _ in range(INFLATED_MIB):
            out.write(chunk)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (struct.pack(">IIII", 0x803, 10, 28, 28), "truncated or padded"),
        (struct.pack(">IIII", 0x999, 10, 28, 28), "wrong IDX magic"),
        (struct.pack(">IIII", 0x803, 4_000_000_000, 28, 28), "header declares 4000000000 items"),
        (struct.pack(">IIII", 0x803, 10, 4096, 4096), "images are 4096x4096, expected 28x28"),
    ],
)
def test_a_gz_bomb_is_refused_before_it_inflates(tmp_path: Path, header: bytes, match: str) -> None:
    images_path, _ = write_idx(
        tmp_path, np.zeros((10, 28, 28), dtype=np.uint8), np.zeros(10, dtype=np.int64)
    )
    _bomb(images_path, header)
    assert images_path.stat().st_size < (INFLATED_MIB << 20) // 50
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError, match=match):
            read_images(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the 64 MiB behind the header were never inflated


def test_an_intact_file_still_reads_with_its_checksum_checked(tmp_path: Path) -> None:
    images = np.arange(5 * 784, dtype=np.uint8).reshape(5, 28, 28)
    images_path, _ = write_idx(tmp_path, images, np.arange(5))
    np.testing.assert_array_equal(read_images(tmp_path)[0], images)
    raw = bytearray(images_path.read_bytes())
    raw[-8] ^= 0xFF  # the gzip trailer's CRC: the payload itself is intact
    images_path.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match="corrupt or truncated gzip"):
        read_images(tmp_path)
