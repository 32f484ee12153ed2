"""Hand-built image files for the limit tests (no heavy imports)."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says ``width``x``height`` but whose pixel data cannot be decoded:
    a size check made from the header refuses it; one made after decoding never gets there
    (decoding fails first, with a different error)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", b"\x00" * 64)  # not a zlib stream
        + _chunk(b"IEND", b"")
    )
