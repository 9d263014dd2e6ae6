"""Video in and out through ffmpeg pipes: probe, decode (FrameReader), encode and mux (VideoWriter).

Everything goes through one ``ffmpeg`` executable (no ffprobe needed): probing parses the banner that
``ffmpeg -i FILE`` prints, decoding reads raw BGR frames from a subprocess pipe in a background thread,
and encoding writes raw BGR frames to an ffmpeg process that also muxes the audio. Frames are streamed:
nothing here ever holds more than a few frames.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import math
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from lipsync_cli.constants import DEFAULT_FPS
from lipsync_cli.errors import (
    BadOption,
    EncodeError,
    InputNotFound,
    MediaError,
    NoAudioStream,
    NoVideoStream,
    VideoOpenError,
    WriteError,
)
from lipsync_cli.files import remove_stale_temps, temp_path, write_error
from lipsync_cli.output_format import MUXERS as VIDEO_SUFFIX_MUXERS
from lipsync_cli.output_format import EncodePlan, simple_plan

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

FFMPEG_ENV = "LIPSYNC_FFMPEG"  # environment override: path of the ffmpeg executable to use
QUEUE_FRAMES = 4  # decoded frames buffered between the decode thread and the consumer
STDERR_TAIL = 2000  # characters of ffmpeg's stderr kept in error messages
IMAGE_FORMATS = ("image2",)  # demuxers of still images (besides the "*_pipe" ones: png_pipe, jpeg_pipe...)


# --------------------------------------------------------------------------------------------------------------
# ffmpeg executable
# --------------------------------------------------------------------------------------------------------------

def find_ffmpeg() -> str:
    """Path of the ffmpeg executable: ``$LIPSYNC_FFMPEG``, else ``ffmpeg`` on PATH, else imageio-ffmpeg's binary.

    Raises ``MediaError`` when none is found.
    """
    override = os.environ.get(FFMPEG_ENV)
    if override:
        exe = shutil.which(override) or (override if os.path.isfile(override) else None)
        if exe is None:
            raise MediaError(f"{FFMPEG_ENV}={override} is not an executable",
                             hint=f"unset {FFMPEG_ENV} or point it at an ffmpeg binary")
        return exe
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as err:  # imageio-ffmpeg missing or without a binary for this platform
        raise MediaError("ffmpeg not found", hint="install ffmpeg or the imageio-ffmpeg package") from err


# --------------------------------------------------------------------------------------------------------------
# child processes
# --------------------------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), resolved in the parent: the child between fork and exec should do very little."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when this process dies, even by SIGKILL; else None.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so it is only set for children started
    from the main thread (whose end is the process's). Without prctl (macOS, Windows), or from another thread,
    children end by themselves when their pipes close, and ``files.remove_stale_temps`` collects what an
    encoder finished after a SIGKILL. preexec_fn makes subprocess fork instead of vfork and runs this in the
    child before exec; it only calls the pre-resolved prctl and getppid (no imports, no locks), which is what
    keeps it safe in a process with threads."""
    prctl = _prctl()
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no one is left to send the signal
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def start_child(cmd: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(cmd, **kwargs)`` for ffmpeg: on Linux the child dies with this process, even when it is
    killed with SIGKILL (see ``_die_with_parent``). Every ffmpeg of the package starts through here."""
    return subprocess.Popen(cmd, preexec_fn=_die_with_parent(), **kwargs)


def run_child(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, **kwargs)`` with ``start_child``'s guarantee (an interrupt kills the child too)."""
    return subprocess.run(cmd, preexec_fn=_die_with_parent(), **kwargs)


def _fps_arg(fps: float) -> str:
    """A frame rate as the exact rational ffmpeg should use: 29.97 -> '2997/100', 30000/1001 -> '30000/1001'."""
    frac = Fraction(fps).limit_denominator(1001)
    if abs(float(frac) - fps) > 1e-6 * fps:  # not a simple rational: pass it with full precision
        frac = Fraction(fps).limit_denominator(1_000_000)
    return f"{frac.numerator}/{frac.denominator}"


def _snap_rate(fps: float, rel_tol: float = 1e-4) -> float:
    """Snap a measured rate onto a small rational (25.0000001 -> 25, 29.97002997 -> 30000/1001). ``rel_tol``: how
    far off the measure may be; when that is coarser than 1e-4 (a 1 ms time base over 12 frames of 29.97 fps
    measures 29.973, which is 11000/367 exactly), the nearest usual rate within it is taken instead."""
    if rel_tol > 1e-4:
        nominal = min((round(fps), 24000 / 1001, 30000 / 1001, 60000 / 1001, 120000 / 1001),
                      key=lambda r: abs(r - fps))
        if nominal and abs(nominal - fps) <= rel_tol * fps:
            return float(nominal)
    frac = Fraction(fps).limit_denominator(1001)
    return float(frac) if abs(float(frac) - fps) <= 1e-4 * fps else fps


def _tail(text: str) -> str:
    return text.strip()[-STDERR_TAIL:]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def _check_input(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputNotFound(f"{p} does not exist")
    if p.is_dir():
        raise InputNotFound(f"{p} is a directory, not a media file")
    if not os.access(p, os.R_OK):
        raise InputNotFound(f"{p} is not readable", hint="check its permissions")
    return p


# --------------------------------------------------------------------------------------------------------------
# probing
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Colour:
    """Colour tags of a video stream, with ffmpeg's names ('' when the file does not say).

    ``range`` 'tv' (limited) or 'pc' (full); ``space`` the YUV matrix ('bt709', 'bt2020nc', 'smpte170m'...);
    ``primaries`` ('bt709', 'bt2020'...); ``trc`` the transfer ('bt709', 'smpte2084' for PQ, 'arib-std-b67' HLG).
    """

    range: str = ""
    space: str = ""
    primaries: str = ""
    trc: str = ""

    def tagged(self) -> bool:
        return any((self.range, self.space, self.primaries, self.trc))


@dataclass(frozen=True)
class StreamInfo:
    """One stream of a file as ``ffmpeg -i`` lists it: ``kind`` 'Video', 'Audio', 'Subtitle', 'Data'...;
    ``language`` its ISO 639-2 tag ('' when none); ``default``: the default track of its kind."""

    index: int
    kind: str
    codec: str
    language: str = ""
    default: bool = False


@dataclass(frozen=True)
class AudioInfo:
    """The first audio stream of a file.

    ``sample_rate`` in Hz; ``duration`` in seconds (the container's, None when unknown).
    """

    path: Path
    codec: str
    sample_rate: int
    channels: int | None
    duration: float | None
    stream_index: int


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` learnt about a video (or still image).

    ``width``/``height``: pixels as displayed, i.e. after rotation metadata; decoded frames have this size.
    ``fps``: frames per second that ``FrameReader`` decodes at by default (for variable-frame-rate input, the
    average rate; for a still image, ``DEFAULT_FPS``). ``n_frames``: frames in the video stream (exact for
    constant-frame-rate files when counted, else an estimate; None when unknown). ``duration``: seconds, the
    container's duration (None when unknown, 0 for an image). ``start_time``: seconds, the first video
    timestamp relative to the start of the file (audio may start earlier). ``stream_duration``: seconds from the
    first video frame to the end of the last (None when not counted). ``rotation``: degrees from the display
    matrix (0 when none). ``is_vfr``: frame durations vary (then ``n_frames`` is what resampling to ``fps``
    gives, see ``frames_at``). ``pix_fmt``: the decoder's pixel format ('yuv420p10le'...); ``colour``: its colour
    tags; ``timecode``: the start timecode ('01:00:00:00'; None when none); ``streams``: every stream of the file;
    ``chapters``: how many chapters it has.
    """

    path: Path
    width: int
    height: int
    fps: float
    n_frames: int | None
    duration: float | None
    has_audio: bool
    is_image: bool
    codec: str
    rotation: float = 0.0
    is_vfr: bool = False
    start_time: float = 0.0
    stream_duration: float | None = None
    stream_index: int = 0
    format_name: str = ""
    audio: AudioInfo | None = None
    pix_fmt: str = ""
    colour: Colour = Colour()
    timecode: str | None = None
    streams: tuple[StreamInfo, ...] = ()
    chapters: int = 0

    @property
    def rate(self) -> Fraction:
        """``fps`` as the exact rational ffmpeg uses (30000/1001 for 29.97)."""
        return Fraction(_fps_arg(self.fps))

    def frames_at(self, fps: float) -> int | None:
        """Frames ``FrameReader`` yields when it resamples this video to ``fps`` (None when unknown).

        ffmpeg's ``fps`` filter places the first and the end timestamps on the nearest output tick, so the count
        is round(end * fps) - round(start * fps) with start/end the video's first and end times.
        """
        if self.is_image:
            return 1
        rate = Fraction(_fps_arg(fps))
        if self.stream_duration is None:
            return max(1, _round_near(Fraction(self.duration) * rate)) if self.duration else None
        first = Fraction(self.start_time)
        end = first + Fraction(self.stream_duration)
        return max(1, _round_near(end * rate) - _round_near(first * rate))


@dataclass
class _Stream:
    index: int
    kind: str  # "Video", "Audio", "Subtitle", "Data", ...
    codec: str
    line: str
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    tbr: float | None = None
    rotation: float = 0.0
    attached_pic: bool = False
    sample_rate: int | None = None
    channels: int | None = None
    start: float | None = None
    pix_fmt: str = ""
    colour: Colour | None = None
    language: str = ""
    default: bool = False
    timecode: str | None = None


@dataclass
class _Header:
    format_name: str
    duration: float | None
    start: float
    streams: list[_Stream]
    chapters: int = 0
    timecode: str | None = None


_INPUT_RE = re.compile(r"^Input #0, (.+?), from '")
_DURATION_RE = re.compile(r"Duration: (N/A|(\d+):(\d+):(\d+(?:\.\d+)?))(?:, start: (-?\d+(?:\.\d+)?))?")
_STREAM_RE = re.compile(r"^\s*Stream #0:(\d+)(?:\[\w+\])?(?:\((\w+)\))?[^:]*: (\w+): (\S+)(.*)$")
_PIXFMT_RE = re.compile(r", (\w+)(?:\(([^)]*)\))?, \d+x\d+")  # ", yuv420p10le(tv, bt709, progressive), 64x48"
_TIMECODE_RE = re.compile(r"^\s+timecode\s*: (\S+)", re.IGNORECASE)  # Matroska tags are upper case
_CHAPTER_RE = re.compile(r"^\s+Chapter #0:\d+: start")
_SIZE_RE = re.compile(r", (\d+)x(\d+)(?=[ ,\[]|$)")
_RATE_RE = re.compile(r"([\d.]+)(k?) (fps|tbr)\b")
_HZ_RE = re.compile(r", (\d+) Hz")
_START_RE = re.compile(r"\bstart (-?\d+(?:\.\d+)?)")
_ROTATION_RE = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees", re.IGNORECASE)
_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "quad": 4, "5.0": 5, "5.1": 6, "6.1": 7, "7.1": 8}


def _parse_header(text: str) -> _Header | None:
    """Parse the banner of ``ffmpeg -i FILE`` for input #0; None when ffmpeg found no input there."""
    fmt = None
    duration: float | None = None
    start = 0.0
    streams: list[_Stream] = []
    chapters = 0
    timecode: str | None = None
    for line in text.splitlines():
        if fmt is None:
            m = _INPUT_RE.match(line)
            if m:
                fmt = m.group(1)
            continue
        if line.startswith(("Input #", "Output #", "Stream mapping")):
            break  # a second input or the output section
        m = _DURATION_RE.search(line)
        if m and "Duration:" in line and not streams:
            if m.group(1) != "N/A":
                duration = int(m.group(2)) * 3600 + int(m.group(3)) * 60 + float(m.group(4))
            if m.group(5):
                start = float(m.group(5))
            continue
        if _CHAPTER_RE.match(line):
            chapters += 1
            continue
        m = _TIMECODE_RE.match(line)
        if m:
            if streams and streams[-1].timecode is None:
                streams[-1].timecode = m.group(1)
            timecode = timecode or m.group(1)
            continue
        m = _STREAM_RE.match(line)
        if m:
            rest = m.group(5)
            st = _Stream(index=int(m.group(1)), kind=m.group(3), codec=m.group(4).rstrip(","), line=line,
                         language=m.group(2) or "", default="(default)" in rest)
            if st.kind == "Video":
                pf = _PIXFMT_RE.search(rest)
                if pf:
                    st.pix_fmt, st.colour = pf.group(1), _parse_colour(pf.group(2) or "")
                size = _SIZE_RE.search(rest)
                if size:
                    st.width, st.height = int(size.group(1)), int(size.group(2))
                for value, kilo, unit in _RATE_RE.findall(rest):
                    rate = float(value) * (1000 if kilo else 1)
                    if unit == "fps":
                        st.fps = rate
                    else:
                        st.tbr = rate
                st.attached_pic = "(attached pic)" in rest
            elif st.kind == "Audio":
                hz = _HZ_RE.search(rest)
                st.sample_rate = int(hz.group(1)) if hz else None
                after = rest[hz.end():] if hz else ""
                layout = after.split(",")[1].strip() if after.count(",") >= 1 else ""
                layout = layout.split("(")[0].strip()
                if layout in _LAYOUT_CHANNELS:
                    st.channels = _LAYOUT_CHANNELS[layout]
                else:
                    ch = re.match(r"(\d+) channels", layout)
                    st.channels = int(ch.group(1)) if ch else None
            sm = _START_RE.search(rest)
            st.start = float(sm.group(1)) if sm else None
            streams.append(st)
            continue
        m = _ROTATION_RE.search(line)
        if m and streams:
            streams[-1].rotation = float(m.group(1))
    if fmt is None:
        return None
    return _Header(format_name=fmt, duration=duration, start=start, streams=streams, chapters=chapters,
                   timecode=timecode)


_FIELD_ORDERS = ("progressive", "top first", "bottom first", "top coded first (swapped)",
                 "bottom coded first (swapped)")


def _parse_colour(text: str) -> Colour:
    """The colour tags in the brackets after a pixel format: 'tv, bt709' (matrix, primaries and transfer all
    bt709), 'tv, bt2020nc/bt2020/smpte2084, progressive', 'pc' ('unknown' parts are left empty)."""
    rng = space = prim = trc = ""
    for part in (p.strip() for p in text.split(",")):
        if part in ("tv", "pc"):
            rng = part
        elif "/" in part:
            space, prim, trc = ([*part.split("/"), "", ""])[:3]
        elif part and part not in _FIELD_ORDERS and not part.startswith(("left", "center", "top", "bottom")):
            space = prim = trc = part
    known = lambda v: "" if v in ("unknown", "reserved", "unspecified") else v  # noqa: E731
    return Colour(range=rng, space=known(space), primaries=known(prim), trc=known(trc))


def _run_header(path: Path, ffmpeg: str) -> tuple[_Header, str]:
    proc = run_child([ffmpeg, "-nostdin", "-hide_banner", "-i", str(path)],
                     check=False, capture_output=True, text=True, errors="replace")
    header = _parse_header(proc.stderr)
    if header is None:
        msg = _last_line(proc.stderr.replace("At least one output file must be specified", ""))
        if "Permission denied" in proc.stderr:
            raise InputNotFound(f"{path} is not readable ({msg})")
        raise VideoOpenError(f"{path} is not a media file ffmpeg can open: {msg}",
                             hint="give a video, an image or an audio file")
    return header, proc.stderr


@dataclass(frozen=True)
class _Scan:
    n_packets: int
    first: Fraction  # s, earliest presentation time (on ffmpeg's timeline, file start at 0)
    end: Fraction  # s, when the last frame stops being shown
    is_vfr: bool
    cfr_rate: Fraction | None  # frames per second from the frame spacing, when constant
    tick: Fraction = Fraction(0)  # s, the time base: how precise first/end are


def _scan_packets(path: Path, stream_index: int, ffmpeg: str) -> _Scan | None:
    """Read the packet timestamps of one stream without decoding (``-c copy -f framecrc``).

    None when the scan failed or found fewer than two timed packets.
    """
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path),
           "-map", f"0:{stream_index}", "-c", "copy", "-f", "framecrc", "-"]
    proc = run_child(cmd, check=False, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        log.debug("packet scan of %s failed: %s", path, _tail(proc.stderr))
        return None
    tb = Fraction(1, 1)
    timed: list[tuple[int, int]] = []  # (pts, duration) in tb ticks
    n = 0
    for line in proc.stdout.splitlines():
        if line.startswith("#tb"):
            num, den = line.split(":", 1)[1].strip().split("/")
            tb = Fraction(int(num), int(den))
            continue
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        n += 1
        pts = int(parts[2])
        if pts != -(2**63):  # AV_NOPTS_VALUE
            timed.append((pts, int(parts[3])))
    if len(timed) < 2:
        return None
    timed.sort()
    pts = np.array([t[0] for t in timed], dtype=np.int64)
    deltas = np.diff(pts)
    deltas = deltas[deltas > 0]
    if len(deltas) == 0:
        return None
    med = int(statistics.median(deltas.tolist()))
    # constant frame rate when every frame lasts the same to within one tick (1 ms time bases round 33.37 ms)
    is_vfr = bool(deltas.max() - deltas.min() > max(1, 0.02 * med))
    last_pts, last_dur = timed[-1]
    end_ticks = last_pts + (last_dur if last_dur > 0 else med)
    span = int(pts[-1] - pts[0])
    cfr_rate = None if is_vfr else Fraction(len(pts) - 1) / (span * tb)
    return _Scan(n_packets=n, first=pts[0] * tb, end=end_ticks * tb, is_vfr=is_vfr, cfr_rate=cfr_rate, tick=tb)


def _round_near(x: Fraction) -> int:
    """Round half away from zero, like ffmpeg's AV_ROUND_NEAR_INF (for x >= 0)."""
    return math.floor(x + Fraction(1, 2))


def _audio_info(path: Path, header: _Header) -> AudioInfo | None:
    for st in header.streams:
        if st.kind == "Audio":
            return AudioInfo(path=path, codec=st.codec, sample_rate=st.sample_rate or 0, channels=st.channels,
                             duration=header.duration, stream_index=st.index)
    return None


def probe(path: str | os.PathLike, count_frames: bool = True) -> VideoInfo:
    """Probe a video or still image with ffmpeg alone (no ffprobe).

    ``count_frames``: also scan the packets of the video stream (``-c copy``, no decoding: about 0.1 s for
    600 frames of 1080p) to get an exact frame count, the exact rate and whether it is variable. Without it,
    ``n_frames`` is estimated from the duration and the nominal rate.

    Raises ``InputNotFound`` (missing/unreadable), ``VideoOpenError`` (not media), ``NoVideoStream``.
    """
    opened = _open_video(path)
    if isinstance(opened, VideoInfo):  # a still image: its header says everything
        return opened
    scan = _scan_packets(opened.info.path, opened.info.stream_index, opened.ffmpeg) if count_frames else None
    return _counted(opened, scan)


class PendingProbe:
    """``probe(path)`` with the packet scan in a background thread (it reads the whole file: seconds for an hour
    of video), so the caller's start-up (audio, model loading) overlaps it.

    The header is read at construction, so a missing file or one that is not media raises at once; ``header``
    is what ``probe(path, count_frames=False)`` gives (size, streams, colour: all but the exact count and rate);
    ``result()`` waits for the scan and gives exactly what ``probe(path)`` gives."""

    def __init__(self, path: str | os.PathLike):
        opened = _open_video(path)
        self._opened = opened if isinstance(opened, _Opened) else None
        if isinstance(opened, VideoInfo):
            self.header: VideoInfo = opened
        else:  # the header's estimate; fps 0 when only the scan can tell it
            self.header = _counted(opened, None) if opened.info.fps else opened.info
        self._done: VideoInfo | None = self.header if self._opened is None else None
        self._scan: _Scan | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if self._opened is not None:
            self._thread = threading.Thread(target=self._run, name="lipsync-probe", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._scan = _scan_packets(self.header.path, self.header.stream_index, self._opened.ffmpeg)
        except BaseException as err:  # noqa: BLE001 - re-raised by result() in the caller's thread
            self._error = err

    def result(self) -> VideoInfo:
        """The full probe (waits for the scan)."""
        if self._done is None:
            self._thread.join()
            if self._error is not None:
                raise self._error
            self._done = _counted(self._opened, self._scan)
        return self._done


@dataclass(frozen=True)
class _Opened:
    """A video as its header describes it, before the packet scan: ``info`` (rate from the header, may be 0)."""

    info: VideoInfo
    ffmpeg: str
    start: float  # s, the stream's start relative to the file's, from the header


def _open_video(path: str | os.PathLike) -> VideoInfo | _Opened:
    """The header half of ``probe``: a complete VideoInfo for a still image, else what the scan completes."""
    p = _check_input(path)
    ffmpeg = find_ffmpeg()
    header, _ = _run_header(p, ffmpeg)
    video = [s for s in header.streams if s.kind == "Video" and not s.attached_pic]
    if not video:
        raise NoVideoStream(f"{p} has no video stream", hint="give a video or an image as the face input")
    st = video[0]
    if not st.width or not st.height:
        raise VideoOpenError(f"{p}: could not read the frame size of stream #0:{st.index} ({st.codec})")
    rotation = st.rotation
    width, height = st.width, st.height
    if round(rotation) % 180 == 90:  # ffmpeg autorotates on decode: a quarter turn swaps the sides
        width, height = height, width
    audio = _audio_info(p, header)
    is_image = header.format_name in IMAGE_FORMATS or header.format_name.endswith("_pipe")
    described = dict(pix_fmt=st.pix_fmt, colour=st.colour or Colour(), chapters=header.chapters,
                     timecode=None if is_image else st.timecode or header.timecode,
                     streams=tuple(StreamInfo(s.index, s.kind, s.codec, s.language, s.default)
                                   for s in sorted(header.streams, key=lambda s: s.index)))
    if is_image:
        return VideoInfo(path=p, width=width, height=height, fps=DEFAULT_FPS, n_frames=1, duration=0.0,
                         has_audio=audio is not None, is_image=True, codec=st.codec, rotation=rotation,
                         stream_index=st.index, format_name=header.format_name, audio=audio, **described)
    info = VideoInfo(path=p, width=width, height=height, fps=float(st.fps or st.tbr or 0.0), n_frames=None,
                     duration=header.duration, has_audio=audio is not None, is_image=False, codec=st.codec,
                     rotation=rotation, stream_index=st.index, format_name=header.format_name, audio=audio,
                     **described)
    return _Opened(info, ffmpeg, (st.start if st.start is not None else header.start) - header.start)


def _counted(opened: _Opened, scan: _Scan | None) -> VideoInfo:
    """The header's VideoInfo completed by the packet scan (exact count, rate, VFR), or estimated without one."""
    info = opened.info
    fps = info.fps
    if scan is not None:
        stream_duration = float(scan.end - scan.first)
        if scan.cfr_rate is not None:  # the spacing is known to a tick or two over the whole span
            fps = _snap_rate(float(scan.cfr_rate), max(1e-4, float(2 * scan.tick / (scan.end - scan.first))))
        else:  # variable: decode at the average rate
            fps = _snap_rate(scan.n_packets / stream_duration)
    if not fps:
        raise VideoOpenError(f"{info.path}: could not determine the frame rate of stream #0:{info.stream_index}",
                             hint="re-encode it with a constant frame rate, e.g. ffmpeg -i IN -r 25 OUT.mp4")
    info = dataclasses.replace(info, fps=float(fps), is_vfr=scan is not None and scan.is_vfr,
                               start_time=float(scan.first) if scan is not None else max(0.0, opened.start),
                               stream_duration=float(scan.end - scan.first) if scan is not None else None)
    if scan is not None and not scan.is_vfr:
        n_frames = scan.n_packets  # one packet per frame: exact
    else:  # what FrameReader's resampling to a constant rate gives
        n_frames = info.frames_at(info.fps)
    return dataclasses.replace(info, n_frames=n_frames)


def probe_audio(path: str | os.PathLike) -> AudioInfo:
    """Probe the first audio stream of any file ffmpeg reads (audio file or video with sound).

    Raises ``InputNotFound``, ``VideoOpenError`` (not media), ``NoAudioStream`` (no audio track).
    """
    p = _check_input(path)
    header, _ = _run_header(p, find_ffmpeg())
    info = _audio_info(p, header)
    if info is None:
        raise NoAudioStream(f"{p} has no audio stream",
                            hint="give an audio file (wav, mp3, m4a...) or a video with a sound track")
    return info


@dataclass(frozen=True)
class HdrMetadata:
    """HDR10 static metadata of a stream: mastering display primaries and white point (CIE 1931 x, y), its
    luminance range (cd/m2), and the content light levels (MaxCLL, MaxFALL, cd/m2; None when absent)."""

    red: tuple[float, float] | None = None
    green: tuple[float, float] | None = None
    blue: tuple[float, float] | None = None
    white: tuple[float, float] | None = None
    min_luminance: float | None = None
    max_luminance: float | None = None
    max_cll: int | None = None
    max_fall: int | None = None

    def x265_params(self) -> list[str]:
        """The same, as libx265's ``master-display`` (0.00002 and 0.0001 cd/m2 units) and ``max-cll`` params."""
        params = []
        if None not in (self.red, self.green, self.blue, self.white, self.min_luminance, self.max_luminance):
            xy = lambda c: f"({round(c[0] / 0.00002)},{round(c[1] / 0.00002)})"  # noqa: E731
            params.append(f"master-display=G{xy(self.green)}B{xy(self.blue)}R{xy(self.red)}WP{xy(self.white)}"
                          f"L({round(self.max_luminance / 0.0001)},{round(self.min_luminance / 0.0001)})")
        if self.max_cll is not None:
            params.append(f"max-cll={self.max_cll},{self.max_fall or 0}")
        return params


_XY = r"\(([\d.]+)[, ]+([\d.]+)\)"
_MASTERING_RE = re.compile(rf"Mastering display metadata:.*?r{_XY} g{_XY} b{_XY} wp{_XY}"
                           r" min_luminance=([\d.]+), max_luminance=([\d.]+)")
_LIGHT_RE = re.compile(r"Content light level metadata: MaxCLL=(\d+), MaxFALL=(\d+)")


def hdr_metadata(info: VideoInfo) -> HdrMetadata | None:
    """The HDR10 static metadata of ``info``'s video stream, read from its first decoded frame (it travels in the
    bitstream, which ``probe`` does not decode): None when it has none. About one frame's decode."""
    cmd = [find_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "info", "-i", str(info.path),
           "-map", f"0:{info.stream_index}", "-frames:v", "1", "-vf", "showinfo", "-f", "null", "-"]
    text = run_child(cmd, check=False, capture_output=True, text=True, errors="replace").stderr
    m, light = _MASTERING_RE.search(text), _LIGHT_RE.search(text)
    if m is None and light is None:
        return None
    meta = HdrMetadata()
    if m is not None:
        v = [float(g) for g in m.groups()]
        meta = dataclasses.replace(meta, red=(v[0], v[1]), green=(v[2], v[3]), blue=(v[4], v[5]),
                                   white=(v[6], v[7]), min_luminance=v[8], max_luminance=v[9])
    if light is not None:
        meta = dataclasses.replace(meta, max_cll=int(light.group(1)), max_fall=int(light.group(2)))
    return meta


def has_audio(path: str | os.PathLike) -> bool:
    """True when ffmpeg sees an audio stream in ``path`` (raises like ``probe_audio`` for missing/non-media)."""
    try:
        probe_audio(path)
    except NoAudioStream:
        return False
    return True


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
            yield frame.copy()  # a copy each time: callers paint mouths into their frame in place

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
                frame = np.empty((h, w, 3), self.dtype)  # (H, W, 3) BGR, writable
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
    ``plan`` (``output_format.plan_output``: codec, pixel format, colour tags, kept streams) says.

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
                 plan: EncodePlan | None = None):
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
        self.audio = probe_audio(audio_path) if audio_path is not None else None
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
