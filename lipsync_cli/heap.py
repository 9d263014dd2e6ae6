"""Keep the C heap from holding on to freed frames, without making every large temporary a fresh mapping.

Full frames (2.8 MB at 720p, 6 MB at 1080p, 25 MB at 4K) are allocated by the decode thread and freed by the
encode thread. Left to malloc, glibc serves an allocation that size from ``mmap`` only until the first one is
freed: then it raises its threshold to that size and later frames come from the per-thread heaps, where a small
live object above them keeps the freed space resident; peak RSS then wanders by a few hundred MB from run to run
and creeps with the length of the video. So frames get their own anonymous mapping (``frame_array``), unmapped
when the last reference goes, whichever thread drops it.

Everything else stays with malloc and its adaptive threshold: the generator's activations (up to ~20 MB a batch)
and the blend's temporaries are freed and allocated again on every batch, by the same thread, and are served
again from the heap. (A fixed 1 MiB threshold, the earlier way to return frames, made each of them a fresh
``mmap``: ~7,000 page faults and a quarter of the CPU time per face at batch 16.) Two arenas bound the heaps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
from math import prod

import numpy as np

M_ARENA_MAX = -8


def frame_array(shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    """A writable, uninitialised array in its own anonymous mapping: its pages go back to the system when the
    array (and every view of it) is freed, on any thread, whatever malloc's state. For full frames."""
    dtype = np.dtype(dtype)
    n = prod(shape)
    buf = mmap.mmap(-1, max(1, n * dtype.itemsize))
    return np.frombuffer(buf, dtype, count=n).reshape(shape)


def copy_frame(frame: np.ndarray) -> np.ndarray:
    """A copy of ``frame`` in its own mapping (see ``frame_array``)."""
    out = frame_array(frame.shape, frame.dtype)
    np.copyto(out, frame)
    return out


@functools.cache
def tune_malloc() -> bool:
    """Set glibc's arena count once per process; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # macOS, Windows, musl: their allocators return large blocks themselves
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, 2))
