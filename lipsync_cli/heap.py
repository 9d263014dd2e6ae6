"""Keep the C heap from holding on to freed frames.

Full frames (6 MB at 1080p, 25 MB at 4K) are allocated by the decode thread and freed by the encode thread. glibc
serves an allocation that size from ``mmap`` only until the first one is freed: then it raises its threshold to
that size and later frames come from the per-thread heaps, where a small live object above them keeps the freed
space resident. Peak RSS then wanders by a few hundred MB from run to run and creeps with the length of the video.
A fixed threshold (which also turns off glibc's adjustment) and two arenas keep every frame an ``mmap`` returned to
the system on ``free``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20  # frames are far above it, tensors of a 96x96 batch mostly below


@functools.cache
def tune_malloc() -> bool:
    """Set glibc's mmap threshold and arena count once per process; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # macOS, Windows, musl: their allocators return large blocks themselves
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, 2))
