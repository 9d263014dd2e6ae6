"""Timelines in and out (OpenTimelineIO): the lines to dub read from an editor's timeline, and what was dubbed
written back, so the editor can conform it.

In: every clip of the timeline's audio tracks is a segment (:class:`lipsync_cli.segments.Segment`): its place on
the track gives start and end, its media reference the line's file (relative to the timeline's folder), its
source range's start the offset into that file, and ``metadata["lipsync"]["speaker"]`` (or the track's name, when
it is not the default) its speaker. ``.otio`` files are read by OpenTimelineIO itself, ``.edl`` (CMX 3600) by the
``otio-cmx3600-adapter`` at the video's frame rate. A timeline whose clips run at another video frame rate than
the video is refused (its frames would land elsewhere).

Out (``dub --timeline-out``): a timeline at the video's frame rate with one video track (the dubbed output, whole)
and one audio track "dub" with one clip per dubbed line (its file and offset), gaps between: ``.otio``. A CMX 3600
``.edl`` holds one video track: each dubbed line is an event of the output video at its place (source in = record
in), what the editor conforms. An EDL read as segments gives the lines' places only (its sources are reels): they
are spoken in AUDIO.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from lipsync_cli.errors import BadOption, InputNotFound

SPEAKER_KEY = "lipsync"
_TC = r"(\d\d:\d\d:\d\d[:;]\d\d)"
_EDL_EVENT = re.compile(rf"^\s*\d+\s+.*?{_TC}\s+{_TC}\s+{_TC}\s+{_TC}\s*$", re.M)  # src in/out, record in/out


def _otio():
    import opentimelineio as otio

    return otio


def _path_of(url: str, folder: Path) -> Path | None:
    if not url:
        return None
    parsed = urlparse(url)
    if parsed.scheme in ("file", ""):
        p = Path(unquote(parsed.path if parsed.scheme == "file" else url))
        return p if p.is_absolute() else folder / p
    raise BadOption(f"media reference {url!r} is not a local file")


def read_timeline(path: Path, fps: float) -> list:
    """The segments of the audio clips of the timeline ``path`` (.otio or .edl)."""
    from lipsync_cli.segments import Segment

    otio = _otio()
    path = Path(path)
    try:
        if path.suffix.lower() == ".edl":
            timeline = otio.adapters.read_from_file(str(path), adapter_name="cmx_3600", rate=fps)
        else:
            timeline = otio.adapters.read_from_file(str(path))
    except FileNotFoundError:
        raise InputNotFound(f"timeline not found: {path}") from None
    except Exception as err:  # OTIO's parse errors have many types
        raise BadOption(f"{path}: not a timeline OpenTimelineIO reads ({type(err).__name__}: {err})") from None
    if not isinstance(timeline, otio.schema.Timeline):
        raise BadOption(f"{path}: holds a {type(timeline).__name__}, not a timeline")
    tracks = [t for t in timeline.tracks if t.kind == otio.schema.TrackKind.Audio]
    if not tracks and path.suffix.lower() == ".edl":  # an EDL of audio events only: its clips are the lines
        tracks = list(timeline.tracks)
    edl = path.suffix.lower() == ".edl"
    # where the video starts on the timeline: an OTIO timeline's global start time; an EDL's record timecodes are
    # the video's own, or count from 01:00:00:00 (the usual program start) when every event is past it
    origin = timeline.global_start_time.to_seconds() if timeline.global_start_time is not None else 0.0
    if edl:  # the adapter starts the track at the first event: its record-in is the track's start
        first = _EDL_EVENT.search(path.read_text(errors="replace"))
        if first is not None:
            from lipsync_cli.segments import parse_time

            record_in = parse_time(first.group(3), fps, f"{path.name} first event")
            origin = -(record_in - (3600.0 if record_in >= 3600.0 else 0.0))
    segments = []
    for track in tracks:
        for k, clip in enumerate(c for c in track if isinstance(c, otio.schema.Clip)):
            where = f"{path.name} track {track.name or '?'} clip {clip.name or k + 1}"
            placed = clip.range_in_parent()
            rate = placed.start_time.rate
            if rate < 1000 and abs(rate - fps) > 1e-3:  # a video frame rate (48000 would be audio samples)
                raise BadOption(f"{where}: the timeline runs at {rate:g} fps, the video at {fps:g} fps",
                                "export the timeline at the video's frame rate")
            start = placed.start_time.to_seconds()
            if timeline.global_start_time is not None:
                start += timeline.global_start_time.to_seconds()
            start -= origin
            ref = clip.media_reference
            url = getattr(ref, "target_url", None) if ref is not None and not edl else None
            audio = _path_of(url, path.parent) if url else None
            offset = clip.source_range.start_time.to_seconds() if clip.source_range is not None else None
            meta = clip.metadata.get(SPEAKER_KEY, {}) if hasattr(clip.metadata, "get") else {}
            speaker = meta.get("speaker") if hasattr(meta, "get") else None
            if speaker is None and not edl and track.name and track.name not in ("Audio", "A", "A1", "A2", "dub"):
                speaker = track.name
            segments.append(Segment(round(start, 6), round(start + placed.duration.to_seconds(), 6), audio,
                                    None if audio is None else offset, speaker, where))
    return segments


def build_timeline(output: Path, segments: list, audio: Path | None, fps: float, duration: float, name: str):
    """The OTIO timeline of a dub: the output video whole, and its dubbed lines on the audio track 'dub'."""
    otio = _otio()

    def rt(seconds: float):  # whole frames where the time is one (to 1 us); a line may start between two frames
        value = seconds * fps
        return otio.opentime.RationalTime(round(value) if abs(value - round(value)) < 1e-6 * fps else value, fps)

    def trange(start: float, length: float):
        return otio.opentime.TimeRange(rt(start), rt(length))

    timeline = otio.schema.Timeline(name=name)
    timeline.global_start_time = otio.opentime.RationalTime(0, fps)
    video = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    video.append(otio.schema.Clip(name=output.stem, source_range=trange(0, duration),
                                  media_reference=otio.schema.ExternalReference(
                                      target_url=Path(output).resolve().as_uri(),
                                      available_range=trange(0, duration))))
    track = otio.schema.Track(name="dub", kind=otio.schema.TrackKind.Audio)
    at = 0.0
    for k, s in enumerate(segments):
        if s.start > at + 1e-9:
            track.append(otio.schema.Gap(source_range=trange(0, s.start - at)))
        src = Path(s.audio or audio)
        clip = otio.schema.Clip(name=f"line {k + 1}", source_range=trange(s.audio_start(), s.end - s.start),
                                media_reference=otio.schema.ExternalReference(target_url=src.resolve().as_uri()))
        clip.metadata[SPEAKER_KEY] = {"speaker": s.speaker, "start": s.start, "end": s.end}
        track.append(clip)
        at = s.end
    timeline.tracks.append(video)
    timeline.tracks.append(track)
    return timeline


def edl_timeline(output: Path, segments: list, fps: float, name: str):
    """One video track: each dubbed line as an event of the output video, source in = record in (the picture to
    conform), gaps between."""
    otio = _otio()

    from lipsync_cli.segments import frame_of

    def rt(seconds: float):  # the frames the dub re-drew: those starting inside the line
        return otio.opentime.RationalTime(frame_of(seconds, fps), fps)

    timeline = otio.schema.Timeline(name=name)
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    url = Path(output).resolve().as_uri()
    at = 0.0
    for k, s in enumerate(segments):
        if s.start > at + 1e-9:
            track.append(otio.schema.Gap(source_range=otio.opentime.TimeRange(rt(0), rt(s.start) - rt(at))))
        track.append(otio.schema.Clip(name=f"line {k + 1}", media_reference=otio.schema.ExternalReference(
            target_url=url), source_range=otio.opentime.TimeRange(rt(s.start), rt(s.end) - rt(s.start))))
        at = s.end
    timeline.tracks.append(track)
    return timeline


def write_timeline(path: Path, output: Path, segments: list, audio: Path | None, fps: float,
                   duration: float) -> None:
    """Write the timeline of a dub to ``path`` (.otio, or .edl through the CMX 3600 adapter), atomically."""
    from lipsync_cli.files import atomic_path

    otio = _otio()
    timeline = build_timeline(output, segments, audio, fps, duration, name=Path(output).stem)
    with atomic_path(path) as tmp:
        if Path(path).suffix.lower() == ".edl":  # CMX 3600 takes one video track: the dubbed shots of the output
            timeline = edl_timeline(output, segments, fps, name=Path(output).stem)
            text = otio.adapters.write_to_string(timeline, adapter_name="cmx_3600", rate=math.ceil(fps - 1e-6))
        else:
            text = otio.adapters.write_to_string(timeline, adapter_name="otio_json")
        Path(tmp).write_text(text)
