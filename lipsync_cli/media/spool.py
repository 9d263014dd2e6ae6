"""The frames a dub writes, in output order: the source decoded once, looped when the audio outlasts it
(``--loop pingpong|forward``, ``loop_index``), the frames a loop needs again kept in a ``FrameSpool`` on disk or
decoded again when there is no room: ``output_frames`` yields (source frame, frame) for each output frame.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lipsync_cli.heap import copy_frame, frame_array
from lipsync_cli.media.decode import FrameReader

log = logging.getLogger(__name__)

LOOP_MODES = ("pingpong", "forward")


# ---------------------------------------------------------------------------------------------------------------
# frames in output order (with looping)


def loop_index(i: int, n: int, mode: str) -> int:
    """Source frame of output frame ``i`` for a video of ``n`` frames: forward 0..n-1,0..; pingpong 0..n-1,n-2..1,0.."""
    if n <= 1:
        return 0
    if mode == "forward":
        return i % n
    period = 2 * n - 2
    k = i % period
    return k if k < n else period - k


class FrameSpool:
    """Every source frame of a video, decoded once, kept in one unnamed temporary file for random access.

    Looping (``--loop pingpong``) needs the frames again, backwards; decoding them again from frame 0 would be
    quadratic in the output length. The file is unlinked at creation (``tempfile.TemporaryFile``), so the space
    comes back when the process ends, even on SIGKILL. Frames are raw (H, W, 3) uint8, one fixed-size slot each.
    """

    def __init__(self, frame_shape: tuple[int, ...], folder: str | None = None, dtype=np.uint8):
        import tempfile

        self.shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.n = 0
        self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (closed by close())

    def append(self, frame: np.ndarray) -> None:
        self._file.seek(self.n * self.nbytes)
        self._file.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        self.n += 1

    def read(self, i: int) -> np.ndarray:
        """A fresh writable copy of frame ``i``."""
        if not 0 <= i < self.n:
            raise IndexError(f"frame {i} not in the spool of {self.n}")
        frame = frame_array(self.shape, self.dtype)
        self._file.seek(i * self.nbytes)
        got = self._file.readinto(memoryview(frame).cast("B"))
        if got != self.nbytes:
            raise OSError(f"short read from the frame spool ({got} of {self.nbytes} bytes)")
        return frame

    def close(self) -> None:
        self._file.close()


def _spool_fits(n_frames: int | None, frame_bytes: int, folder: str | None) -> bool:
    """Whether a spool of ``n_frames`` frames fits in ``folder`` with 1 GiB to spare."""
    import shutil
    import tempfile

    if n_frames is None:
        return True  # unknown length: try; a full disk falls back to re-decoding
    try:
        free = shutil.disk_usage(folder or tempfile.gettempdir()).free
    except OSError:
        return False
    return n_frames * frame_bytes + (1 << 30) <= free


def output_frames(video: Path, is_image: bool, fps: float, n_out: int, loop: str, info=None,
                  spool_dir: str | None = None, stats: dict | None = None,
                  depth: int = 8) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (source frame index, frame copy) for each of ``n_out`` output frames, streaming.

    The video is decoded forwards once. When the audio outlasts it, ``forward`` decodes it again from the start
    for every repeat, and ``pingpong`` plays it backwards and forwards from a spool of the decoded frames on disk
    (:class:`FrameSpool`, in ``spool_dir`` or the system temp folder): either way each output frame costs at
    most one decoded frame, so decoding is linear in the output length. Without room on disk for the spool,
    backward runs are decoded again in chunks (slower, same frames). ``info`` (from ``probe``) saves probing the
    file again per pass. ``stats["decoded"]`` counts the frames decoded from the file; ``stats["source_frames"]``,
    set when the video loops, is its length in frames. ``depth``: 8 (uint8 frames) or 16 bits per channel
    (uint16, see ``media.formats``).
    """
    stats = stats if stats is not None else {}
    stats.setdefault("decoded", 0)
    if is_image:
        with FrameReader(video, info=info, depth=depth) as reader:
            still = next(iter(reader))
        stats["decoded"] += 1
        for _ in range(n_out):
            yield 0, copy_frame(still)
        return
    produced = 0
    spool: FrameSpool | None = None
    try:
        with FrameReader(video, fps=fps, info=info, max_frames=n_out, depth=depth) as reader:
            expected = reader.n_frames
            want_spool = loop == "pingpong" and (expected is None or expected < n_out)
            for j, frame in enumerate(reader):
                stats["decoded"] += 1
                if want_spool and spool is None:
                    want_spool = _spool_fits(expected, frame.nbytes, spool_dir)
                    if want_spool:
                        spool = FrameSpool(frame.shape, spool_dir, frame.dtype)
                    else:
                        log.warning("no room on disk to spool %s for looping; decoding backward runs again", video)
                if spool is not None:
                    try:
                        spool.append(frame)
                    except OSError as err:  # disk full: give up the spool, re-decode instead
                        log.warning("frame spool failed (%s); decoding backward runs again", err)
                        spool.close()
                        spool, want_spool = None, False
                yield j, frame
                produced += 1
        n = produced
        if produced >= n_out or n == 0:
            return
        stats["source_frames"] = n  # the video is shorter than the output: it loops
        if spool is not None and spool.n == n:
            for i in range(produced, n_out):
                src = loop_index(i, n, loop)
                yield src, spool.read(src)
            return
        yield from _redecode_loop(video, fps, n, produced, n_out, loop, info, stats, depth=depth)
    finally:
        if spool is not None:
            spool.close()


def _redecode_loop(video: Path, fps: float, n: int, produced: int, n_out: int, loop: str, info, stats: dict,
                   max_chunk_bytes: int = 256 << 20, depth: int = 8) -> Iterator[tuple[int, np.ndarray]]:
    """Output frames ``produced .. n_out - 1`` of a looped video of ``n`` frames by decoding it again: forward
    runs once per repeat; backward runs (pingpong without a spool) in reversed chunks of ``max_chunk_bytes``."""
    def read_range(start: int, stop: int) -> list[np.ndarray]:
        out = []
        with FrameReader(video, fps=fps, max_frames=stop, info=info, depth=depth) as reader:
            for j, frame in enumerate(reader):
                stats["decoded"] += 1
                if j >= start:
                    out.append(frame)
        return out

    while produced < n_out:
        i = produced
        src = loop_index(i, n, loop)
        backward = loop == "pingpong" and n > 1 and (i % (2 * n - 2)) >= n
        if not backward:  # a forward run from src to the end of the video
            with FrameReader(video, fps=fps, info=info, max_frames=min(n, src + n_out - produced),
                             depth=depth) as reader:
                for j, frame in enumerate(reader):
                    stats["decoded"] += 1
                    if j < src:
                        continue
                    if produced >= n_out:
                        return
                    yield j, frame
                    produced += 1
            continue
        hi, chunk = src + 1, 8  # a backward run: src, src-1, ..., 1
        while hi > 1 and produced < n_out:
            lo = max(1, hi - chunk)
            frames = read_range(lo, hi)
            if frames:
                chunk = max(8, min(1024, max_chunk_bytes // frames[0].nbytes))
            for k, frame in zip(range(hi - 1, lo - 1, -1), reversed(frames)):
                if produced >= n_out:
                    return
                yield k, frame
                produced += 1
            hi = lo
