"""Encoding and muxing: ``VideoWriter`` writes raw BGR frames to an ffmpeg process that encodes them with the
arguments of an ``EncodePlan`` (``media.formats``), muxes the audio, and renames the file into place only once it is
complete; a refused write (disk full, read-only, permission) is a ``WriteError`` naming the cause.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from lipsync_cli.errors import BadOption, EncodeError, WriteError
from lipsync_cli.files import remove_stale_temps, temp_path, write_error
from lipsync_cli.media.ffmpeg import _fps_arg, _last_line, _tail, find_ffmpeg, start_child
from lipsync_cli.media.formats import MUXERS as VIDEO_SUFFIX_MUXERS
from lipsync_cli.media.formats import EncodePlan, simple_plan
from lipsync_cli.media.probe import AudioInfo, probe_audio

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------------------------

# errors ffmpeg reports when the file system refuses the output (its messages use the C library's strerror)
_WRITE_ERRNOS = tuple(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM")
                      if hasattr(errno, n))


def _write_cause(rc: int, stderr: str) -> OSError | None:
    """The file-system error that made ffmpeg fail (disk full, quota, file size limit, read-only, permission),
    as an ``OSError``; None when the failure was something else (a bad codec option, a crash...)."""
    if hasattr(signal, "SIGXFSZ") and rc == -signal.SIGXFSZ:  # killed for exceeding `ulimit -f`
        return OSError(errno.EFBIG, f"{os.strerror(errno.EFBIG)} (over the file size limit, ulimit -f)")
    for code in _WRITE_ERRNOS:
        if os.strerror(code) in stderr:
            return OSError(code, os.strerror(code))
    return None


def _exit_text(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-rc).name}"
    return f"exit {rc}"


def _ebml_size(f: IO[bytes]) -> int | None:
    """An EBML variable-length size at the file position; -1 for 'unknown size'; None when truncated/invalid."""
    head = f.read(1)
    if not head or head[0] == 0:
        return None
    length = 9 - head[0].bit_length()  # leading zero bits + 1
    rest = f.read(length - 1)
    if len(rest) != length - 1:
        return None
    value = head[0] & ((1 << (8 - length)) - 1)
    for b in rest:
        value = value << 8 | b
    return -1 if value == (1 << (7 * length)) - 1 else value


def _incomplete(path: Path, muxer: str) -> str | None:
    """Why an encoded file is not a whole container (None when it is): a cut-off box or a missing ``moov`` for
    mp4/mov, a Segment running past the end for Matroska. Catches an ffmpeg that exits 0 after a failed write."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        if muxer in ("mp4", "mov"):
            boxes, pos = set(), 0
            while pos < size:  # top-level boxes: 32-bit size (1: a 64-bit size follows, 0: to the end), type
                f.seek(pos)
                head = f.read(16)
                n = int.from_bytes(head[:4], "big") if len(head) >= 8 else -1
                if n == 1:
                    n = int.from_bytes(head[8:16], "big") if len(head) == 16 else -1
                elif n == 0:
                    n = size - pos
                if n < 8 or pos + n > size:
                    return f"it is cut off at byte {size} inside a box that starts at byte {pos}"
                boxes.add(head[4:8])
                pos += n
            missing = [b.decode() for b in (b"moov", b"mdat") if b not in boxes]
            return f"it has no {missing[0]} box" if missing else None
        if muxer == "matroska":
            if f.read(4) != b"\x1a\x45\xdf\xa3" or (header := _ebml_size(f)) is None or header < 0:
                return "it has no EBML header"
            f.seek(header, os.SEEK_CUR)
            if f.read(4) != b"\x18\x53\x80\x67" or (segment := _ebml_size(f)) is None:
                return "it has no Segment"
            if segment >= 0 and f.tell() + segment > size:
                return f"it is cut off at byte {size}, inside a Segment that ends at byte {f.tell() + segment}"
    return None


class VideoWriter:
    """Encode BGR frames and mux an audio track with one ffmpeg process: H.264 yuv420p + AAC by default, or what
    ``plan`` (``formats.plan_output``: codec, pixel format, colour tags, kept streams) says.

    Frames go to ffmpeg's stdin as raw bgr24 (bgr48le, uint16 frames, when ``plan.depth`` is 16).
    The output is written to a hidden temporary file beside
    ``out_path`` (same folder, so the final rename is atomic) and renamed to ``out_path`` only when ffmpeg
    exits 0 on ``close()`` and the file is a whole container, flushed to disk. An exception inside the ``with``
    block (Ctrl-C, SIGTERM through the CLI), ``abort()``, or a failed ffmpeg kills ffmpeg and deletes the
    temporary file: no partial output is ever left. The temporary name is ``files.temp_path``'s, so a run killed
    with SIGKILL leaves a file the next writer into the folder removes (``files.remove_stale_temps``).

    A write the file system refuses (disk full, quota, ``ulimit -f``, read-only, permission denied), in ffmpeg
    or in the final rename, raises ``WriteError`` naming ``out_path`` and the cause; other ffmpeg failures raise
    ``EncodeError``. Both carry ffmpeg's stderr in ``.stderr`` when there is one.

    Odd sizes without a plan: yuv420p needs even sides, so an odd width/height is *padded* by one pixel column/row that
    repeats the edge pixels (``pad`` + ``fillborders=smear``); no source pixel is lost or resampled.
    ``out_width``/``out_height`` give the encoded size.

    ``audio_path``: any file ffmpeg reads with an audio stream (wav, mp3, m4a, a video's track...), read from
    ``audio_start`` seconds for ``audio_duration`` seconds (None: to its end). Without ``shortest`` the output
    lasts as long as the longer of video and audio; pass ``audio_duration = n_frames / fps`` to match them.
    ``crf``/``preset``: x264/x265 quality (lower crf is better; 18 is visually lossless).
    """

    def __init__(self, out_path: str | os.PathLike, width: int, height: int, fps: float,
                 audio_path: str | os.PathLike | None = None, audio_start: float = 0.0,
                 audio_duration: float | None = None, crf: int = 18, preset: str = "medium",
                 codec: str = "libx264", *, audio_bitrate: str = "192k", shortest: bool = False,
                 plan: EncodePlan | None = None, audio_info: AudioInfo | None = None):
        self.out_path = Path(out_path)
        if width <= 0 or height <= 0:
            raise BadOption(f"frame size must be positive, got {width}x{height}")
        if not fps > 0 or not math.isfinite(fps):
            raise BadOption(f"fps must be > 0, got {fps}")
        if not 0 <= crf <= 51:
            raise BadOption(f"crf must be in 0..51, got {crf}")
        if audio_start < 0:
            raise BadOption(f"audio_start must be >= 0 s, got {audio_start}")
        if audio_duration is not None and not audio_duration > 0:
            raise BadOption(f"audio_duration must be > 0 s, got {audio_duration}")
        if self.out_path.is_dir():
            raise BadOption(f"output {self.out_path} is a directory", hint="give a file name such as out.mp4")
        suffix = self.out_path.suffix.lower()
        if suffix not in VIDEO_SUFFIX_MUXERS:
            raise BadOption(f"output {self.out_path} must end in {', '.join(VIDEO_SUFFIX_MUXERS)}")
        # ``audio_info``: ``audio_path``'s probe, when the caller made it (each input is probed once)
        self.audio = (audio_info or probe_audio(audio_path)) if audio_path is not None else None
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        muxer = self._muxer = VIDEO_SUFFIX_MUXERS[suffix]
        if plan is None:
            plan = simple_plan(self.width, self.height, codec, crf, preset, muxer, audio_bitrate)
        self.plan = plan
        self.out_width, self.out_height = plan.encoded_size
        self.frames_written = 0
        self._frame_shape = (self.height, self.width, 3)
        self._dtype = np.dtype(np.uint16 if plan.depth == 16 else np.uint8)
        self._done = False

        folder = self.out_path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(self.out_path, err) from None
        remove_stale_temps(folder)
        self.tmp_path = temp_path(self.out_path, f".tmp{suffix}")
        cmd = [find_ffmpeg(), "-hide_banner", "-nostats", "-loglevel", "error", "-y", *plan.pipe_args,
               "-f", "rawvideo", "-pix_fmt", plan.pipe_pix_fmt, "-s", f"{self.width}x{self.height}",
               "-framerate", _fps_arg(self.fps), "-i", "pipe:0"]
        if self.audio is not None:
            if audio_start > 0:
                cmd += ["-ss", f"{audio_start:.6f}"]
            if audio_duration is not None:
                cmd += ["-t", f"{audio_duration:.6f}"]
            cmd += ["-i", str(self.audio.path)]
        source_input = None
        if plan.source is not None and plan.keep_args:
            source_input = 2 if self.audio is not None else 1
            cmd += ["-i", str(plan.source)]
        cmd += plan.output_args(f"1:{self.audio.stream_index}" if self.audio is not None else None, source_input)
        if self.audio is not None and shortest:
            cmd += ["-shortest"]
        if muxer in ("mp4", "mov"):
            cmd += ["-movflags", "+faststart"]
        cmd += ["-f", muxer, str(self.tmp_path)]
        self.command = cmd
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the ffmpeg process)
        log.debug("encode: %s", cmd)
        try:
            # own session: a terminal's Ctrl-C reaches Python only, which then kills ffmpeg and deletes the file
            self._proc = start_child(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     start_new_session=True)
        except OSError as err:
            self._stderr.close()
            raise EncodeError(f"could not start ffmpeg to write {self.out_path}: {err}") from err

    def write(self, frame: np.ndarray) -> None:
        """Append one BGR frame of shape (height, width, 3): uint8, or uint16 when ``plan.depth`` is 16."""
        if self._done:
            raise RuntimeError("VideoWriter is closed")
        if frame.shape != self._frame_shape or frame.dtype != self._dtype:
            raise ValueError(f"expected a {self._dtype} frame of shape {self._frame_shape}, "
                             f"got {frame.dtype} {frame.shape}")
        data = np.ascontiguousarray(frame)
        try:
            self._proc.stdin.write(memoryview(data).cast("B"))
        except (BrokenPipeError, OSError) as err:
            rc = self._proc.wait()
            stderr = self._read_stderr()
            self.abort()
            raise self._failure("stopped while writing", rc, stderr) from err
        self.frames_written += 1

    def _read_stderr(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def _failure(self, what: str, rc: int, stderr: str) -> WriteError | EncodeError:
        """The error for an ffmpeg that exited ``rc``: ``WriteError`` when the file system refused the output."""
        cause = _write_cause(rc, stderr)
        err: WriteError | EncodeError
        if cause is not None:
            err = write_error(self.out_path, cause)
        else:
            err = EncodeError(f"ffmpeg {what} {self.out_path} ({_exit_text(rc)}): {_last_line(stderr)}")
        err.stderr = _tail(stderr)  # the whole story, for logs and LIPSYNC_DEBUG
        return err

    def close(self) -> Path:
        """Finish encoding; rename the temporary file to ``out_path`` if ffmpeg succeeded, the file is a whole
        container and it reached the disk (fsync). Returns ``out_path``.

        Raises ``WriteError`` (the file system refused the output, or ffmpeg left an incomplete file) or
        ``EncodeError`` (ffmpeg failed, or no frame was written); nothing is left behind then.
        """
        if self._done:
            return self.out_path
        if self.frames_written == 0:
            self.abort()
            raise EncodeError(f"no frames were written to {self.out_path}")
        try:
            self._proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        rc = self._proc.wait()
        stderr = self._read_stderr()
        if rc != 0:
            self.abort()
            raise self._failure("failed writing", rc, stderr)
        try:
            fd = os.open(self.tmp_path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows: no fsync read-only
            try:
                os.fsync(fd)  # a full disk may only say so now (delayed allocation, network file systems)
            finally:
                os.close(fd)
            problem = _incomplete(self.tmp_path, self._muxer)
            if problem is None:
                os.replace(self.tmp_path, self.out_path)
        except OSError as err:
            self.abort()
            raise write_error(self.out_path, err) from None
        if problem is not None:
            self.abort()
            err = WriteError(f"could not write {self.out_path}: ffmpeg reported success but {problem}",
                             "is the disk full?")
            err.stderr = _tail(stderr)
            raise err
        self._finish()
        return self.out_path

    def abort(self) -> None:
        """Kill ffmpeg and delete the temporary file (no output). Safe to call twice."""
        if self._done:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        self._proc.wait()
        self.tmp_path.unlink(missing_ok=True)
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self._stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:  # a writer dropped without close() must not leave its temp file
        with contextlib.suppress(Exception):
            if not self._done:
                self.abort()
