"""The C heap of a serving process: keep what a model swap frees from staying resident.

A hot swap opens a new ONNX Runtime session beside the old one and frees the old one a moment
later: the model's weights, ONNX Runtime's arena (its blocks of 1, 2, 4, 8 MiB... grown by the
largest batch forwarded), the parsed protobuf. All of it is ``malloc``'d. glibc serves a block of
at least ``M_MMAP_THRESHOLD`` (128 KiB at start) with its own ``mmap``, unmapped on ``free``; but
its threshold is *dynamic*: each such block freed raises the threshold to the block's size (up to
32 MiB). After the first model's blocks are freed, the next models' multi-MiB blocks come from
the heaps of the threads that allocate them (the reload runs in a different worker thread each
time), and a freed heap block is returned to the system only when it sits at the heap's top. So
every swap left the old model's blocks resident as free heap memory, scattered over the
threads' heaps, and a replica's RSS stepped up at every promotion (``python -m
benchmarks.bench_swap_memory`` measures it, one hypothesis at a time; docs/serving.md has the
figures).

:func:`pin_mmap_threshold` fixes the threshold (``mallopt(M_MMAP_THRESHOLD)``, which also turns
the dynamic adjustment off), so large blocks are always mapped and go back to the system the
moment they are freed. glibc only: elsewhere (musl, macOS) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from dataclasses import dataclass

logger = logging.getLogger("clothing_classifier.serving")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
# glibc's own starting value: blocks this large and larger are mapped on their own.
MMAP_THRESHOLD_BYTES = 128 * 1024
MIB = 1024 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc with ``mallopt`` and ``mallinfo2`` (2.33+)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallinfo2")):
            return None
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.mallinfo2.restype = _MallInfo2
        return libc
    except (OSError, AttributeError):
        return None


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Blocks of ``threshold`` bytes and more are mapped on their own from now on, in every
    thread, and unmapped when freed (the threshold no longer follows freed blocks). Returns
    whether it applied (False where the C library is not glibc)."""
    libc = _glibc()
    if libc is None:
        logger.info("not glibc: the C heap's mmap threshold is left as it is")
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1)


@dataclass(frozen=True)
class HeapStats:
    """glibc's ``mallinfo2`` over all arenas, in MiB."""

    heap_mib: float  # bytes the heaps hold from the system (``arena``)
    in_use_mib: float  # of those, allocated (``uordblks``)
    free_mib: float  # of those, free, resident unless trimmed (``fordblks``)
    mapped_mib: float  # blocks mapped on their own (``hblkhd``)


def heap_stats() -> HeapStats | None:
    """The C heap's figures now, or ``None`` where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return None
    info = libc.mallinfo2()
    return HeapStats(
        heap_mib=info.arena / MIB,
        in_use_mib=info.uordblks / MIB,
        free_mib=info.fordblks / MIB,
        mapped_mib=info.hblkhd / MIB,
    )
