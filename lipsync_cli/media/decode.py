"""Decoding: ``FrameReader`` reads raw BGR frames (8 or 16 bits per channel) from an ffmpeg pipe in a background
thread, through a bounded queue; nothing here holds more than a few frames.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

import numpy as np

from lipsync_cli.constants import DEFAULT_FPS
from lipsync_cli.errors import BadOption, VideoOpenError
from lipsync_cli.heap import copy_frame, frame_array
from lipsync_cli.media.ffmpeg import _fps_arg, _last_line, find_ffmpeg, run_child, start_child
from lipsync_cli.media.probe import VideoInfo, probe

if TYPE_CHECKING:
    from typing_extensions import Self

QUEUE_FRAMES = 4  # decoded frames buffered between the decode thread and the consumer


# --------------------------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------------------------

_END = object()  # sentinel from the decode thread: no more frames


class FrameReader:
    """Iterate the frames of a video (or a still image) as BGR uint8 arrays of shape (height, width, 3)
    (uint16, 0..65535, with ``depth=16``: for sources of more than 8 bits per channel).

    Video is decoded by one ffmpeg subprocess per pass (``-f rawvideo -pix_fmt bgr24``), read by a background
    thread into a queue of ``QUEUE_FRAMES`` frames; an error in that thread is re-raised in the consumer.
    Frame ``i`` is at time ``i / fps`` seconds after the first video frame:
    - ``fps=None`` on constant-frame-rate input: every decoded frame, no resampling;
    - variable-frame-rate input, or ``fps`` different from the file's: resampled to a constant rate with
      ffmpeg's ``fps`` filter (frames dropped/duplicated).
    Rotation metadata is applied by ffmpeg, so frames are ``info.width`` x ``info.height`` as displayed.

    ``size=(width, height)``: ffmpeg scales the frames to that size (area averaging), e.g. small frames for face
    detection; ``width``/``height`` then report it.

    A still image is decoded once and yielded ``still_frames`` times (1 when None), each a fresh copy.
    ``max_frames`` stops after that many frames; ``loop=True`` restarts a video from its first frame when
    it ends until ``max_frames`` frames were given (as Wav2Lip does when the audio is longer than the video).

    Use as a context manager, or call ``close()``: it kills ffmpeg and joins the thread. Single pass: iterate once.
    """

    def __init__(self, path: str | os.PathLike, fps: float | None = None, still_frames: int | None = None,
                 *, size: tuple[int, int] | None = None, max_frames: int | None = None, loop: bool = False,
                 info: VideoInfo | None = None, queue_frames: int = QUEUE_FRAMES, depth: int = 8):
        if depth not in (8, 16):
            raise BadOption(f"depth must be 8 or 16 bits per channel, got {depth}")
        if fps is not None and not fps > 0:
            raise BadOption(f"fps must be > 0, got {fps}")
        if still_frames is not None and still_frames < 0:
            raise BadOption(f"still_frames must be >= 0, got {still_frames}")
        if max_frames is not None and max_frames < 0:
            raise BadOption(f"max_frames must be >= 0, got {max_frames}")
        if loop and max_frames is None:
            raise BadOption("loop=True needs max_frames (else the video would repeat forever)")
        if size is not None and (len(size) != 2 or min(size) <= 0):
            raise BadOption(f"size must be (width, height) > 0, got {size}")
        self.info = info if info is not None else probe(path)
        self.path = self.info.path
        self.size = (int(size[0]), int(size[1])) if size is not None else None
        self.width, self.height = self.size if self.size else (self.info.width, self.info.height)
        self.max_frames = max_frames
        self.loop = loop
        self.depth = depth
        self.dtype = np.dtype(np.uint16 if depth == 16 else np.uint8)
        self._pipe_fmt = "bgr48le" if depth == 16 else "bgr24"
        self.frames_read = 0
        self._queue_frames = max(1, queue_frames)
        self._ffmpeg = find_ffmpeg()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._stderr: IO[bytes] | None = None
        self._iterated = False
        self._closed = False
        if self.info.is_image:
            self.fps = float(fps) if fps else DEFAULT_FPS
            self.resample = False
            self._still_count = 1 if still_frames is None else still_frames
        else:
            self.fps = float(fps) if fps else self.info.fps
            self.resample = self.info.is_vfr or (fps is not None and abs(fps - self.info.fps) > 1e-6 * fps)
            self._still_count = 0

    # -- sizes -------------------------------------------------------------------------------------------------
    @property
    def n_frames(self) -> int | None:
        """Frames this reader will yield (exact for images and counted CFR video, else an estimate)."""
        if self.info.is_image:
            n = self._still_count
        elif self.loop:
            return self.max_frames
        elif self.resample:
            n = self.info.frames_at(self.fps)
        else:
            n = self.info.n_frames
        if n is not None and self.max_frames is not None:
            n = min(n, self.max_frames)
        return n

    def __len__(self) -> int:
        n = self.n_frames
        if n is None:
            raise TypeError("frame count unknown")
        return n

    # -- iteration ---------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[np.ndarray]:
        if self._iterated:
            raise RuntimeError("FrameReader is single-pass: open a new one to read again")
        if self._closed:
            raise RuntimeError("FrameReader is closed")
        self._iterated = True
        if self.info.is_image:
            return self._iter_still()
        return self._iter_video()

    def _iter_still(self) -> Iterator[np.ndarray]:
        n = self._still_count if self.max_frames is None else min(self._still_count, self.max_frames)
        if n == 0:
            return
        frame = self._decode_still()  # (H, W, 3) uint8, decoded once
        for _ in range(n):
            self.frames_read += 1
            yield copy_frame(frame)  # a copy each time: callers paint mouths into their frame in place

    def _decode_still(self) -> np.ndarray:
        cmd = [self._ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(self.path),
               "-map", f"0:{self.info.stream_index}", "-frames:v", "1", *self._filters(),
               "-f", "rawvideo", "-pix_fmt", self._pipe_fmt, "-"]
        proc = run_child(cmd, check=False, capture_output=True)
        size = self.width * self.height * 3 * self.dtype.itemsize
        if proc.returncode != 0 or len(proc.stdout) < size:
            raise VideoOpenError(f"could not decode image {self.path}: "
                                 f"{_last_line(proc.stderr.decode(errors='replace'))}")
        return np.frombuffer(proc.stdout[:size], self.dtype).reshape(self.height, self.width, 3).copy()

    def _filters(self) -> list[str]:
        chain = []
        if self.resample:
            chain.append(f"fps=fps={_fps_arg(self.fps)}")
        if self.size is not None:
            chain.append(f"scale={self.width}:{self.height}:flags=area")
        return ["-vf", ",".join(chain)] if chain else []

    def _command(self, limit: int | None) -> list[str]:
        cmd = [self._ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(self.path),
               "-map", f"0:{self.info.stream_index}", "-an", "-sn", "-dn"]
        cmd += self._filters()
        if limit is not None:
            cmd += ["-frames:v", str(limit)]
        # passthrough: the muxer must not duplicate frames to fill a late video start (rawvideo defaults to cfr)
        cmd += ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", self._pipe_fmt, "-"]
        return cmd

    def _iter_video(self) -> Iterator[np.ndarray]:
        try:
            while True:
                remaining = None if self.max_frames is None else self.max_frames - self.frames_read
                if remaining is not None and remaining <= 0:
                    return
                got = 0
                for frame in self._one_pass(remaining):
                    got += 1
                    self.frames_read += 1
                    yield frame
                if got == 0:
                    raise VideoOpenError(f"no frames could be decoded from {self.path}")
                if not self.loop:
                    return
        finally:
            self.close()

    def _one_pass(self, limit: int | None) -> Iterator[np.ndarray]:
        self._stop_pass()
        self._stop.clear()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the ffmpeg process)
        # own session: a terminal Ctrl-C reaches Python only, which then stops ffmpeg and cleans up itself
        self._proc = start_child(self._command(limit), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=self._stderr, start_new_session=True)
        self._queue = queue.Queue(maxsize=self._queue_frames)
        self._thread = threading.Thread(target=self._decode_loop, args=(self._proc, self._queue, self._stderr),
                                        name="lipsync-decode", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop_pass()

    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _decode_loop(self, proc: subprocess.Popen, q: queue.Queue, stderr: IO[bytes]) -> None:
        """Decode thread: read whole frames from ffmpeg's stdout into the queue; errors go into the queue too."""
        h, w = self.height, self.width
        size = h * w * 3 * self.dtype.itemsize
        try:
            assert proc.stdout is not None
            while not self._stop.is_set():
                frame = frame_array((h, w, 3), self.dtype)  # (H, W, 3) BGR, writable, its own mapping
                buf = memoryview(frame).cast("B")
                got = 0
                while got < size:
                    n = proc.stdout.readinto(buf[got:])
                    if not n:
                        break
                    got += n
                if got == 0:
                    break
                if got < size:
                    rc = proc.wait()
                    raise VideoOpenError(f"truncated frame from {self.path} ({got} of {size} bytes; ffmpeg "
                                         f"exit {rc}): {_last_line(self._read_stderr(stderr))}",
                                         hint="the reported frame size may be wrong for this file")
                if not self._put(q, frame):
                    return
            if self._stop.is_set():
                return
            rc = proc.wait()
            if rc != 0:
                raise VideoOpenError(f"ffmpeg failed decoding {self.path} (exit {rc}): "
                                     f"{_last_line(self._read_stderr(stderr))}")
            self._put(q, _END)
        except BaseException as err:  # noqa: BLE001 (re-raised in the consumer)
            if not self._stop.is_set():
                self._put(q, err)

    @staticmethod
    def _read_stderr(stderr: IO[bytes]) -> str:
        try:
            stderr.seek(0)
            return stderr.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def _stop_pass(self) -> None:
        self._stop.set()
        proc, thread, q = self._proc, self._thread, self._queue
        if proc is not None and proc.poll() is None:
            proc.kill()
        if q is not None:  # unblock a thread waiting on a full queue
            while True:
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
        if thread is not None:
            thread.join(timeout=10)
        if proc is not None:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
        self._proc = self._thread = self._queue = self._stderr = None

    def close(self) -> None:
        """Kill ffmpeg (if running) and join the decode thread. Safe to call twice."""
        self._stop_pass()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; close() is the contract
        with contextlib.suppress(Exception):
            self._stop_pass()
