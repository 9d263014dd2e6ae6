"""Only the lines you replace: the segments of the video to dub (``dub --segments``, ``--start/--end``).

A segment is one line: ``start`` and ``end`` in the video (seconds, or a timecode ``HH:MM:SS:FF`` at the video's
frame rate, or ``HH:MM:SS.mmm``), the ``audio`` file of the new line (default: AUDIO, which is then the full-length
dub track, aligned with the video), the ``offset`` in that file where the line starts (default: ``start`` for AUDIO,
0 for a line's own file) and an optional ``speaker``. They come from:

- CSV (a header row; columns ``start,end[,audio,offset,speaker]``) or JSON (a list of objects, or
  ``{"segments": [...]}``), paths relative to the file's folder;
- subtitles read by ``pysubs2`` (SRT, ASS/SSA, WebVTT...): one line per cue, spoken in AUDIO; an ASS cue's actor
  (``Name``) is its speaker;
- an OpenTimelineIO timeline (``.otio``, or a CMX 3600 ``.edl``): the clips of its audio tracks
  (:mod:`lipsync_cli.timeline`);
- ``--start/--end``: one segment, spoken in AUDIO.

Every mistake (overlapping or out-of-range segments, a timecode at another frame rate, a missing line file, a file
with no cues) is one ``BadOption``/``InputNotFound`` naming the file and the line, raised before any work.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync_cli.errors import BadOption, InputNotFound

TABLE_SUFFIXES = (".csv", ".json")
SUBTITLE_SUFFIXES = (".srt", ".ass", ".ssa", ".vtt", ".sub")
TIMELINE_SUFFIXES = (".otio", ".edl")
SEGMENT_SUFFIXES = TABLE_SUFFIXES + SUBTITLE_SUFFIXES + TIMELINE_SUFFIXES
EDGE_RAMP = 0.005  # seconds: the line's sound fades in and out over this, inside the segment (no click)

_TIMECODE = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})([:;])(\d{1,3})$")  # ';' before the frames: drop-frame
_CLOCK = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:[.,]\d*)?)$")


@dataclass(frozen=True)
class Segment:
    """One line to dub: [start, end) seconds of the video."""

    start: float
    end: float
    audio: Path | None = None  # None: the dub's AUDIO
    offset: float | None = None  # seconds into ``audio`` where the line starts; None: start (AUDIO) / 0 (own file)
    speaker: str | None = None
    where: str = ""  # "lines.csv line 3": for messages

    def audio_start(self) -> float:
        if self.offset is not None:
            return self.offset
        return self.start if self.audio is None else 0.0


def validate_segment_options(options) -> None:
    """The option rules of segments, checked by ``DubOptions.validate`` (no file is read here)."""
    if options.segments is not None and (options.start is not None or options.end is not None):
        raise BadOption("--segments and --start/--end both say what to dub: use one")
    if options.segments is not None and Path(options.segments).suffix.lower() not in SEGMENT_SUFFIXES:
        raise BadOption(f"--segments {options.segments} must end in one of {', '.join(SEGMENT_SUFFIXES)}")
    has_segments = options.segments is not None or options.start is not None or options.end is not None
    if options.me is not None and not has_segments:
        raise BadOption("--me is the sound under the new lines: give it with --segments or --start/--end")
    if options.timeline_out is not None and Path(options.timeline_out).suffix.lower() not in TIMELINE_SUFFIXES:
        raise BadOption(f"--timeline-out {options.timeline_out} must end in .otio or .edl")
    if has_segments and options.encode.acodec == "copy":
        raise BadOption("--acodec copy cannot be used with segments: the output's sound is assembled",
                        "use --acodec aac, pcm or flac")
    for value, name in ((options.start, "--start"), (options.end, "--end")):
        if value is not None:
            parse_time(value, None, name)  # the format now; timecode frames once the frame rate is known


def has_segments(options) -> bool:
    return options.segments is not None or options.start is not None or options.end is not None


# ---------------------------------------------------------------------------------------------------------------
# times


def _timecode_frame(h: int, mi: int, s: int, f: int, nominal: int, fps: float, drop: bool, what: str) -> int:
    """The frame number of a timecode. Non-drop counts ``nominal`` frames a second (30 at 29.97 fps); drop-frame
    (SMPTE 12M, 29.97 and 59.94 fps only) skips the first 2 (4 at 59.94) frame numbers of every minute but each
    tenth, so that its clock keeps to the real time: 00:10:00;00 is frame 17982 at 29.97."""
    minutes = h * 60 + mi
    frame = (minutes * 60 + s) * nominal + f
    if not drop:
        return frame
    if nominal not in (30, 60) or abs(fps - nominal * 1000 / 1001) > 1e-3:
        raise BadOption(f"{what} is drop-frame (';'), which exists at 29.97 and 59.94 fps only; the video runs at "
                        f"{fps:g} fps", "write it with ':' before the frames (HH:MM:SS:FF), or give seconds")
    skip = nominal // 15  # frame numbers skipped a minute: 2 at 29.97, 4 at 59.94
    if s == 0 and f < skip and mi % 10:
        raise BadOption(f"{what} does not exist in drop-frame: frames 0-{skip - 1} of minute {mi} are skipped",
                        f"the minute starts at frame {skip:02d}")
    return frame - skip * (minutes - minutes // 10)


def parse_time(value, fps: float | None, where: str) -> float:
    """Seconds from a number, ``HH:MM:SS:FF`` (frames at ``fps``; ``;`` for drop-frame), ``[HH:]MM:SS[.mmm]`` or
    ``HH:MM:SS,mmm`` (SRT). ``fps`` None checks the format only."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        t = float(value)
    else:
        text = str(value).strip()
        m = _TIMECODE.match(text)
        c = _CLOCK.match(text)
        try:
            t = float(text)
        except ValueError:
            t = None
        if t is not None:
            pass
        elif m:
            h, mi, s, sep, f = m.groups()
            h, mi, s, f = int(h), int(mi), int(s), int(f)
            if fps is None:
                return 0.0
            nominal = math.ceil(fps - 1e-6)
            if f >= nominal:
                raise BadOption(f"{where}: timecode {text} has frame {f}, but the video runs at {fps:g} fps "
                                f"(frames 0-{nominal - 1})", "give the timecode at the video's frame rate, or seconds")
            if mi > 59 or s > 59:
                raise BadOption(f"{where}: timecode {text} is not HH:MM:SS:FF")
            t = _timecode_frame(h, mi, s, f, nominal, fps, sep == ";", f"{where}: timecode {text}") / fps
        elif c:
            h, mi, s = c.groups()
            t = int(h or 0) * 3600 + int(mi) * 60 + float(s.replace(",", "."))
        else:
            raise BadOption(f"{where}: {text!r} is not a time", "give seconds (12.5) or a timecode "
                                                                 "(00:00:12:12 or 00:00:12.500)")
    if not math.isfinite(t) or t < 0:
        raise BadOption(f"{where}: time {value!r} must be a finite number of seconds >= 0")
    return t


# ---------------------------------------------------------------------------------------------------------------
# reading


def _table_rows(path: Path) -> list[tuple[str, dict]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
        if not reader.fieldnames or not {"start", "end"} <= {f.strip().lower() for f in reader.fieldnames if f}:
            raise BadOption(f"{path}: the first row must name the columns, with at least start,end "
                            "(and optionally audio,offset,speaker)")
        rows = []
        for raw in reader:
            row = {k.strip().lower(): (v.strip() if isinstance(v, str) else v) for k, v in raw.items()
                   if k is not None and v not in (None, "")}
            if row:
                rows.append((f"{path.name} line {reader.line_num}", row))
        return rows
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadOption(f"{path}: not JSON ({err.msg}, line {err.lineno})") from None
    if isinstance(obj, dict):
        obj = obj.get("segments")
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise BadOption(f"{path}: JSON segments must be a list of objects with start and end "
                        "(or {\"segments\": [...]})")
    return [(f"{path.name} segment {k + 1}", {str(a).lower(): b for a, b in r.items()}) for k, r in enumerate(obj)]


def _from_rows(path: Path, rows: list[tuple[str, dict]], fps: float) -> list[Segment]:
    out = []
    for where, row in rows:
        unknown = set(row) - {"start", "end", "audio", "offset", "speaker"}
        if unknown:
            raise BadOption(f"{where}: unknown column(s) {', '.join(sorted(unknown))}",
                            "columns are start, end, audio, offset, speaker")
        if "start" not in row or "end" not in row:
            raise BadOption(f"{where}: a segment needs start and end")
        audio = row.get("audio")
        audio = (path.parent / str(audio)) if audio not in (None, "") else None
        offset = parse_time(row["offset"], fps, f"{where} offset") if row.get("offset") not in (None, "") else None
        out.append(Segment(parse_time(row["start"], fps, f"{where} start"), parse_time(row["end"], fps,
                                                                                        f"{where} end"),
                           audio, offset, str(row["speaker"]) if row.get("speaker") not in (None, "") else None,
                           where))
    return out


def _from_subtitles(path: Path) -> list[Segment]:
    import pysubs2

    fmt = {".srt": "srt", ".ass": "ass", ".ssa": "ssa", ".vtt": "vtt", ".sub": "microdvd"}[path.suffix.lower()]
    try:
        subs = pysubs2.load(str(path), format_=fmt)
    except Exception as err:  # pysubs2 raises its own format errors, and UnicodeDecodeError
        raise BadOption(f"{path}: not a subtitle file pysubs2 reads ({type(err).__name__}: {err})") from None
    cues = [e for e in subs if not e.is_comment and e.end > e.start]
    return [Segment(e.start / 1000.0, e.end / 1000.0, None, None, e.name or None, f"{path.name} cue {k + 1}")
            for k, e in enumerate(cues)]


def read_segments(path: Path, fps: float) -> list[Segment]:
    """The segments of ``path`` (see the module docstring), in the file's order, not yet checked."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"segments file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in TABLE_SUFFIXES:
            return _from_rows(path, _table_rows(path), fps)
        if suffix in TIMELINE_SUFFIXES:
            from lipsync_cli.timeline import read_timeline

            return read_timeline(path, fps)
        return _from_subtitles(path)
    except (OSError, UnicodeDecodeError) as err:
        raise InputNotFound(f"cannot read segments file {path}: {err}") from None


def check_segments(segments: list[Segment], duration: float, fps: float, source: str,
                   audio: Path | None) -> list[Segment]:
    """Sorted by start; raises on no segment, an empty or out-of-range one, overlaps, a missing line file, a
    segment without audio when there is no AUDIO."""
    if not segments:
        raise BadOption(f"{source} has no segments (no cue, no row, no clip)", "add at least one line to dub")
    slack = 0.5 / fps  # the last frame's end may be given as the video's duration rounded
    for s in segments:
        if s.end <= s.start:
            raise BadOption(f"{s.where}: segment {s.start:.3f}-{s.end:.3f} s is empty or reversed",
                            "give end after start")
        if s.end > duration + slack:
            raise BadOption(f"{s.where}: segment {s.start:.3f}-{s.end:.3f} s ends after the video "
                            f"({duration:.3f} s)", "keep every segment inside the video")
        if s.audio is not None and not Path(s.audio).is_file():
            raise InputNotFound(f"{s.where}: line audio not found: {s.audio}")
        if s.audio is None and audio is None:
            raise BadOption(f"{s.where}: this segment has no audio file and no AUDIO was given",
                            "give AUDIO or an audio column")
    ordered = sorted(segments, key=lambda s: s.start)
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.end - 1e-9:
            raise BadOption(f"{b.where}: segment {b.start:.3f}-{b.end:.3f} s overlaps {a.where} "
                            f"({a.start:.3f}-{a.end:.3f} s)", "make the segments disjoint")
    return ordered


def segments_for(options, duration: float, fps: float, audio: Path | None) -> list[Segment] | None:
    """The checked segments of ``options`` (None: the whole video is dubbed, as without them)."""
    if not has_segments(options):
        return None
    if options.segments is not None:
        segs = read_segments(Path(options.segments), fps)
        source = str(options.segments)
    else:
        start = parse_time(options.start, fps, "--start") if options.start is not None else 0.0
        end = parse_time(options.end, fps, "--end") if options.end is not None else duration
        segs, source = [Segment(start, min(end, duration) if options.end is None else end, where="--start/--end")], \
            "--start/--end"
    if options.me is not None and not Path(options.me).is_file():
        raise InputNotFound(f"--me file not found: {options.me}")
    return check_segments(segs, duration, fps, source, audio)


# ---------------------------------------------------------------------------------------------------------------
# what the dub uses


def frame_of(t: float, fps: float) -> int:
    """The first frame starting at or after ``t`` seconds (frame i starts at i / fps)."""
    return int(math.ceil(t * fps - 1e-6))


def active_frames(segments: list[Segment], n_frames: int, fps: float) -> np.ndarray:
    """(n_frames,) bool: the frames that start inside a segment."""
    active = np.zeros(n_frames, bool)
    for s in segments:
        active[frame_of(s.start, fps):frame_of(s.end, fps)] = True
    return active


def _line(seg: Segment, audio: Path | None, sr: int, channels: int | None = None) -> np.ndarray:
    from lipsync_cli.audio import load_audio

    return load_audio(seg.audio or audio, sr=sr, start=seg.audio_start(), duration=seg.end - seg.start,
                      min_samples=0, channels=channels)


def speech_track(segments: list[Segment], audio: Path | None, n_samples: int, sr: int) -> np.ndarray:
    """The new speech at ``sr`` Hz mono, ``n_samples`` long: each line at its place, digital silence elsewhere
    (what drives the mouths and the speech activity)."""
    out = np.zeros(n_samples, np.float32)
    for s in segments:
        a = int(round(s.start * sr))
        line = _line(s, audio, sr)[:max(0, n_samples - a)]
        out[a:a + len(line)] = line
    return out


def write_output_audio(path: Path, segments: list[Segment], audio: Path | None, video: Path, duration: float,
                       me: Path | None = None, sr: int = 48000) -> None:
    """The output's sound as a WAV at ``sr``: the source's own audio (silence when it has none), and inside each
    segment the line, over ``me`` (the music-and-effects stem at the same times) when given; the line's sound
    fades in and out over EDGE_RAMP inside the segment."""
    import soundfile

    from lipsync_cli.audio import load_audio
    from lipsync_cli.errors import NoAudioStream
    from lipsync_cli.media.probe import probe_audio

    n = int(round(duration * sr))
    try:
        channels = min(2, probe_audio(video).channels or 1)
        base = load_audio(video, sr=sr, channels=channels, min_samples=0)
    except NoAudioStream:
        channels, base = 1, np.zeros((0, 1), np.float32)
    out = np.zeros((n, channels), np.float32)
    out[:min(n, len(base))] = base[:n]
    bed = None
    if me is not None:
        bed = load_audio(me, sr=sr, channels=channels, min_samples=0)
    ramp = max(1, int(EDGE_RAMP * sr))
    for s in segments:
        a, b = int(round(s.start * sr)), min(n, int(round(s.end * sr)))
        if b <= a:
            continue
        line = np.zeros((b - a, channels), np.float32)
        got = _line(s, audio, sr, channels=channels)[:b - a]
        line[:len(got)] = got
        if bed is not None:
            part = bed[a:b]
            line[:len(part)] += part
        w = np.ones(b - a, np.float32)
        k = min(ramp, (b - a) // 2)
        if k:
            w[:k] = np.linspace(0, 1, k, endpoint=False)
            w[b - a - k:] = np.linspace(1, 0, k, endpoint=False)
        out[a:b] = out[a:b] * (1 - w[:, None]) + line * w[:, None]
    soundfile.write(str(path), out, sr, subtype="FLOAT")


@contextmanager
def segment_audio(segments: list[Segment], audio: Path | None, video: Path, duration: float,
                  me: Path | None = None) -> Iterator[Path]:
    """:func:`write_output_audio` into a temporary WAV, deleted afterwards: the file the output carries."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lipsync-lines-") as folder:
        path = Path(folder) / "lines.wav"
        write_output_audio(path, segments, audio, video, duration, me)
        yield path
