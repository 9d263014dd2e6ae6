"""What a media file holds, read from the banner ``ffmpeg -i FILE`` prints: ``probe`` (``VideoInfo``: size, rate,
frame count, colour, rotation, audio, kept streams), ``PendingProbe`` (the header now, the exact frame count from a
packet scan in a thread), ``probe_audio``, ``has_audio``, ``hdr_metadata``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import statistics
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipsync_cli.constants import DEFAULT_FPS
from lipsync_cli.errors import InputNotFound, NoAudioStream, NoVideoStream, VideoOpenError
from lipsync_cli.media.ffmpeg import _fps_arg, _last_line, _tail, find_ffmpeg, run_child

log = logging.getLogger(__name__)

IMAGE_FORMATS = ("image2",)  # demuxers of still images (besides the "*_pipe" ones: png_pipe, jpeg_pipe...)


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
    ``result()`` waits for the scan and gives exactly what ``probe(path)`` gives. ``info``: the probe already
    made, given back as both."""

    def __init__(self, path: str | os.PathLike, info: VideoInfo | None = None):
        if info is not None:  # a probe already made (a batch worker's, for all the jobs of a video): no scan
            self.header, self._done, self._opened = info, info, None
            self._scan, self._error, self._thread = None, None, None
            return
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
