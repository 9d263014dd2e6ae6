"""Media layer, video side: probe, FrameReader (CFR/VFR/codecs/rotation/odd/still) and VideoWriter."""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import media
from synth import ffmpeg_exe, make_audio, make_image, make_video, run_ffmpeg

from lipsync_cli.errors import (
    BadOption,
    EncodeError,
    InputNotFound,
    MediaError,
    NoAudioStream,
    NoVideoStream,
    VideoOpenError,
)
from lipsync_cli.media.decode import QUEUE_FRAMES, FrameReader
from lipsync_cli.media.encode import VideoWriter
from lipsync_cli.media.ffmpeg import FFMPEG_ENV, find_ffmpeg
from lipsync_cli.media.probe import _parse_header, has_audio, probe, probe_audio


@functools.lru_cache(maxsize=1)
def _encoders() -> str:
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-encoders"], check=False, capture_output=True,
                          text=True).stdout


def _need(encoder: str) -> None:
    if f" {encoder} " not in _encoders():
        pytest.skip(f"this ffmpeg has no {encoder} encoder")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Small synthetic clips shared by the tests of this module (made once)."""
    d = tmp_path_factory.mktemp("clips")
    out = {
        "cfr": make_video(d / "cfr.mp4", seconds=1.0, fps=25, size=(160, 120)),
        "silent": make_video(d / "silent.mp4", seconds=0.4, fps=25, audio=False),
        "wav": make_audio(d / "tone.wav", seconds=1.5, kind="sine"),
    }
    # 10 frames 1/25 s apart, then 10 frames 2/25 s apart: variable frame rate, 1.2 s
    out["vfr"] = d / "vfr.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=0.8",
                "-vf", "setpts='if(lt(N,10),N,10+2*(N-10))/25/TB'", "-fps_mode", "vfr",
                "-c:v", "libx264", "-pix_fmt", "yuv420p", str(out["vfr"])])
    # display matrix of +90 degrees on an untouched copy of the CFR stream
    out["rot"] = d / "rot.mp4"
    run_ffmpeg(["-display_rotation", "90", "-i", str(out["cfr"]), "-map", "0:v", "-c", "copy", str(out["rot"])])
    return out


# --------------------------------------------------------------------------------------------------------------
# ffmpeg
# --------------------------------------------------------------------------------------------------------------

def test_find_ffmpeg_and_override(monkeypatch):
    exe = find_ffmpeg()
    assert Path(exe).exists()
    monkeypatch.setenv(FFMPEG_ENV, exe)
    assert find_ffmpeg() == exe
    monkeypatch.setenv(FFMPEG_ENV, "/nonexistent/ffmpeg")
    with pytest.raises(MediaError, match="LIPSYNC_FFMPEG"):
        find_ffmpeg()


def test_parse_header_old_style_rotation_and_attached_pic():
    text = (
        "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'phone.mov':\n"
        "  Duration: 00:01:02.50, start: 0.000000, bitrate: 9000 kb/s\n"
        "  Stream #0:0(und): Audio: aac (LC) (mp4a / 0x6134706D), 48000 Hz, stereo, fltp, 128 kb/s (default)\n"
        "  Stream #0:1(und): Video: hevc (Main) (hvc1 / 0x31637668), yuv420p(tv, bt709), 1920x1080, "
        "8000 kb/s, 29.97 fps, 29.97 tbr, 600 tbn (default)\n"
        "    Side data:\n"
        "      displaymatrix: rotation of -90.00 degrees\n"
        "  Stream #0:2: Video: mjpeg (Baseline), yuvj420p(pc), 300x300, 90k tbr, 90k tbn (attached pic)\n")
    h = _parse_header(text)
    assert h.format_name == "mov,mp4,m4a,3gp,3g2,mj2"
    assert h.duration == pytest.approx(62.5)
    a, v, pic = h.streams
    assert (a.kind, a.codec, a.sample_rate, a.channels) == ("Audio", "aac", 48000, 2)
    assert (v.index, v.codec, v.width, v.height, v.fps, v.rotation) == (1, "hevc", 1920, 1080, 29.97, -90.0)
    assert pic.attached_pic and pic.tbr == 90000 and not v.attached_pic


# --------------------------------------------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------------------------------------------

def test_probe_cfr(clips):
    info = probe(clips["cfr"])
    assert (info.width, info.height, info.fps, info.n_frames) == (160, 120, 25.0, 25)
    assert info.duration == pytest.approx(1.0, abs=0.05)
    assert info.has_audio and info.audio.codec == "aac" and info.audio.sample_rate == 44100
    assert info.codec == "h264" and not info.is_image and not info.is_vfr and info.rotation == 0


def test_probe_ntsc_rate_exact(tmp_path):
    path = make_video(tmp_path / "ntsc.mp4", seconds=0.5, fps="30000/1001", audio=False)
    info = probe(path)
    assert info.fps == pytest.approx(30000 / 1001, rel=1e-9)
    assert info.n_frames == 15


def test_probe_vfr(clips):
    info = probe(clips["vfr"])
    assert info.is_vfr
    # 20 frames over 1.2 s (the last one lasts 2/25 s like the ones before it): the average rate
    assert info.fps == pytest.approx(20 / 1.2, rel=1e-6)
    assert info.stream_duration == pytest.approx(1.2)
    assert info.n_frames == 20 and info.frames_at(25) == 30


def test_probe_rotation(clips):
    info = probe(clips["rot"])
    assert info.rotation == 90.0
    assert (info.width, info.height) == (120, 160)


def test_probe_image(tmp_path):
    info = probe(make_image(tmp_path / "still.png", size=(90, 70)))
    assert info.is_image and (info.width, info.height) == (90, 70) and info.n_frames == 1 and not info.has_audio


def test_probe_errors(tmp_path, clips):
    with pytest.raises(InputNotFound):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(InputNotFound):
        probe(tmp_path)
    junk = tmp_path / "notes.mp4"
    junk.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoOpenError, match="notes.mp4"):
        probe(junk)
    with pytest.raises(NoVideoStream, match="tone.wav"):
        probe(clips["wav"])
    with pytest.raises(NoAudioStream, match="silent.mp4"):
        probe_audio(clips["silent"])
    assert has_audio(clips["cfr"]) and not has_audio(clips["silent"])
    assert probe_audio(clips["wav"]).sample_rate == 44100


REAL = [
    # name, width, height, fps, n_frames, codec, has_audio, vfr
    ("latentsync_demo1_video.mp4", 1080, 1920, 25.0, 250, "hevc", True, False),
    ("sadtalker_WDA_KatieHill_000.mp4", 512, 512, 25.0, 200, "mpeg4", True, False),
    ("liveportrait_d13.mp4", 720, 1280, 30.0, 352, "h264", False, False),
    ("facerec_short_hamilton_clip.mp4", 640, 360, 29.97, 275, "h264", True, False),
    ("retalking_1.mp4", 700, 700, 1350 / 61, 135, "h264", True, True),
    ("wan22_video.mp4", 1920, 1080, 30.0, 106, "h264", True, False),
]


@pytest.mark.parametrize("name,w,h,fps,n,codec,audio,vfr", REAL, ids=[r[0] for r in REAL])
def test_probe_real_clips(name, w, h, fps, n, codec, audio, vfr):
    info = probe(media(name))
    assert (info.width, info.height, info.n_frames, info.codec) == (w, h, n, codec)
    assert info.fps == pytest.approx(fps, rel=1e-6)
    assert info.has_audio == audio and info.is_vfr == vfr and not info.is_image


def test_probe_real_late_video_start():
    # the hamilton clip's video starts 0.852 s into the file, its audio at 0.008 s
    assert probe(media("facerec_short_hamilton_clip.mp4")).start_time == pytest.approx(0.844, abs=1e-3)


# --------------------------------------------------------------------------------------------------------------
# FrameReader
# --------------------------------------------------------------------------------------------------------------

def test_read_cfr(clips):
    with FrameReader(clips["cfr"]) as reader:
        assert (reader.width, reader.height, reader.fps, len(reader)) == (160, 120, 25.0, 25)
        frames = [f.copy() for f in reader]
    assert len(frames) == 25
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[1])  # testsrc2 moves
    frames[0][:] = 0  # writable


def test_read_vfr_resampled_to_constant_rate(clips):
    source = list(FrameReader(clips["vfr"], info=dataclasses.replace(probe(clips["vfr"]), is_vfr=False)))
    assert len(source) == 20  # every coded frame when not resampled
    with FrameReader(clips["vfr"], fps=25) as reader:
        out = list(reader)
    assert len(out) == 30  # 1.2 s at 25 fps
    # frame i shows what is on screen at i/25 s: frames 0-9 once, then frames 10-19 twice each
    expected = list(range(10)) + [10 + (i - 10) // 2 for i in range(10, 30)]
    got = [int(np.argmin([np.abs(o.astype(int) - s).mean() for s in source])) for o in out]
    assert got == expected
    with FrameReader(clips["vfr"]) as reader:  # default: the average rate
        assert reader.resample and len(reader) == 20 == sum(1 for _ in reader)


def test_read_scaled(clips, tmp_path):
    with FrameReader(clips["rot"], size=(60, 80), max_frames=2) as reader:
        frames = list(reader)
        assert (reader.width, reader.height) == (60, 80)
    assert frames[1].shape == (80, 60, 3)
    still = list(FrameReader(make_image(tmp_path / "s.png", size=(64, 48)), size=(33, 25), still_frames=2))
    assert still[1].shape == (25, 33, 3)


def test_read_rotated_matches_rot90(clips):
    plain = list(FrameReader(clips["cfr"], max_frames=3))
    with FrameReader(clips["rot"], max_frames=3) as reader:
        rotated = list(reader)
    assert rotated[2].shape == (160, 120, 3) == (reader.height, reader.width, 3)
    # +90 degrees in the display matrix is a quarter turn counter-clockwise; same bitstream, so exact
    assert np.array_equal(rotated[2], np.rot90(plain[2], 1))


@pytest.mark.parametrize("encoder,suffix,codec,pix_fmt", [
    ("libx265", ".mp4", "hevc", "yuv420p"),
    ("mpeg4", ".mp4", "mpeg4", "yuv420p"),
    ("libvpx-vp9", ".webm", "vp9", "yuv420p"),
    ("libx264", ".mkv", "h264", "yuv444p"),  # odd size needs a chroma format without subsampling
])
def test_read_codecs_and_odd_size(tmp_path, encoder, suffix, codec, pix_fmt):
    _need(encoder)
    odd = pix_fmt == "yuv444p"
    path = tmp_path / f"clip{suffix}"
    run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=0.4",
                *(["-vf", "scale=161:121"] if odd else []), "-c:v", encoder, "-pix_fmt", pix_fmt,
                *(["-deadline", "realtime"] if encoder == "libvpx-vp9" else []), str(path)])
    info = probe(path)
    size = (161, 121) if odd else (160, 120)
    assert (info.codec, info.width, info.height, info.n_frames, info.fps) == (codec, *size, 10, 25.0)
    frames = list(FrameReader(path))
    assert len(frames) == 10 and frames[0].shape == (size[1], size[0], 3)


@pytest.mark.parametrize("name,shape", [("latentsync_demo1_video.mp4", (1920, 1080, 3)),
                                        ("sadtalker_WDA_KatieHill_000.mp4", (512, 512, 3))])
def test_read_real_hevc_and_mpeg4(name, shape):
    with FrameReader(media(name), max_frames=3) as reader:
        frames = list(reader)
    assert len(frames) == 3 and frames[0].shape == shape and frames[0].std() > 5


@pytest.mark.parametrize("name,fps,expected", [
    ("retalking_1.mp4", None, 135),  # VFR at its average rate
    ("retalking_1.mp4", 25.0, 152),
    ("facerec_short_hamilton_clip.mp4", 25.0, 229),  # 29.97 -> 25, video starting 0.844 s in
    ("sadtalker_WDA_KatieHill_000.mp4", 29.97, 240),
])
def test_read_real_resampled_counts(name, fps, expected):
    with FrameReader(media(name), fps=fps, size=(64, 64)) as reader:
        assert reader.resample and len(reader) == expected  # the estimate is exact
        assert sum(1 for _ in reader) == expected


def test_read_still_image(tmp_path, monkeypatch):
    path = make_image(tmp_path / "face.jpg", size=(64, 48))
    calls = []
    original = FrameReader._decode_still
    monkeypatch.setattr(FrameReader, "_decode_still", lambda self: calls.append(1) or original(self))
    with FrameReader(path, still_frames=7) as reader:
        assert (reader.fps, len(reader)) == (25.0, 7)
        frames = list(reader)
    assert len(calls) == 1  # decoded once, not per frame
    assert len(frames) == 7 and frames[0].shape == (48, 64, 3)
    frames[0][:] = 0  # each frame is its own copy
    assert np.array_equal(frames[1], frames[6]) and not np.array_equal(frames[0], frames[1])
    assert len(list(FrameReader(path))) == 1
    assert FrameReader(path, fps=30, still_frames=3).fps == 30.0


def test_read_max_frames_loop_and_single_pass(clips):
    src = list(FrameReader(clips["silent"]))  # 10 frames
    assert len(src) == 10
    reader = FrameReader(clips["silent"], max_frames=25, loop=True)
    looped = list(reader)
    assert len(looped) == 25 == reader.frames_read
    assert np.array_equal(looped[10], src[0]) and np.array_equal(looped[24], src[4])
    with pytest.raises(RuntimeError):
        list(reader)
    with pytest.raises(BadOption):
        FrameReader(clips["silent"], loop=True)
    with pytest.raises(BadOption):
        FrameReader(clips["silent"], fps=0)


def test_read_early_close_kills_ffmpeg_and_queue_is_bounded(clips):
    reader = FrameReader(clips["cfr"])
    it = iter(reader)
    next(it)
    proc, thread, q = reader._proc, reader._thread, reader._queue
    thread.join(timeout=0.5)  # let the decode thread fill what it may
    assert q.qsize() <= QUEUE_FRAMES  # bounded: the thread waits, it does not read ahead
    reader.close()
    assert proc.poll() is not None and not thread.is_alive()
    assert not any(t.name == "lipsync-decode" and t is thread for t in threading.enumerate())


def test_read_worker_error_reaches_consumer(clips):
    wrong = dataclasses.replace(probe(clips["silent"]), width=161)  # frames do not tile the byte stream
    with pytest.raises(VideoOpenError, match="truncated frame"):
        list(FrameReader(clips["silent"], info=wrong))


# --------------------------------------------------------------------------------------------------------------
# VideoWriter
# --------------------------------------------------------------------------------------------------------------

def _colour_frames(n: int, w: int, h: int):
    """Solid BGR frames cycling blue, green, red (checks channel order after the round trip)."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i in range(n):
        frame = np.empty((h, w, 3), np.uint8)
        frame[:] = colours[i % 3]
        yield frame


def test_writer_round_trip_odd_size_with_audio(tmp_path, clips):
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 161, 121, 25, audio_path=clips["wav"], audio_duration=1.0) as writer:
        for frame in _colour_frames(25, 161, 121):
            writer.write(frame)
        assert not out.exists() and writer.tmp_path.exists()  # nothing at the target until success
        assert writer.tmp_path.parent == out.parent and writer.tmp_path.name.startswith(".out.mp4.lipsync-")
        assert f"-{os.getpid()}-" in writer.tmp_path.name  # a later run can tell whether its writer is alive
    assert out.exists() and [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    info = probe(out)
    assert (info.codec, info.width, info.height, info.fps, info.n_frames) == ("h264", 162, 122, 25.0, 25)
    assert (writer.out_width, writer.out_height) == (162, 122)
    assert info.has_audio and info.audio.codec == "aac"
    assert info.duration == pytest.approx(1.0, abs=0.06)
    frames = list(FrameReader(out))
    assert len(frames) == 25
    for i, frame in enumerate(frames[:3]):
        assert int(np.argmax(frame[60, 80])) == i  # blue, green, red: BGR order kept
    # the padding repeats the edge: the extra column/row has the colour of its neighbour
    assert np.abs(frames[0][:, 161].astype(int) - frames[0][:, 160].astype(int)).max() <= 8


def test_writer_audio_from_video_track_and_offset(tmp_path, clips):
    out = tmp_path / "dub.mov"
    with VideoWriter(out, 64, 48, 25, audio_path=clips["cfr"], audio_start=0.2, audio_duration=0.4,
                     preset="ultrafast") as writer:
        for frame in _colour_frames(10, 64, 48):
            writer.write(frame)
    info = probe(out)
    assert info.n_frames == 10 and info.has_audio and info.audio.codec == "aac"
    assert info.duration == pytest.approx(0.4, abs=0.06)


def test_writer_no_audio(tmp_path):
    out = tmp_path / "mute.mp4"
    with VideoWriter(out, 32, 32, 30000 / 1001) as writer:
        for frame in _colour_frames(6, 32, 32):
            writer.write(frame)
    info = probe(out)
    assert not info.has_audio and info.n_frames == 6 and info.fps == pytest.approx(30000 / 1001, rel=1e-6)


def test_writer_exception_leaves_nothing(tmp_path, clips):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(KeyError), VideoWriter(out, 32, 32, 25, audio_path=clips["wav"]) as writer:
        for frame in _colour_frames(5, 32, 32):
            writer.write(frame)
        raise KeyError("boom")
    assert out.read_bytes() == b"previous result"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    assert writer._proc.poll() is not None


def test_writer_failed_ffmpeg_raises_encode_error(tmp_path):
    out = tmp_path / "bad.mp4"
    with pytest.raises(EncodeError) as err, VideoWriter(out, 32, 32, 25, codec="no_such_codec") as writer:
        for frame in _colour_frames(200, 32, 32):
            writer.write(frame)
    assert "no_such_codec" in err.value.stderr or "Unknown encoder" in err.value.stderr
    assert list(tmp_path.iterdir()) == []


def test_writer_refusals(tmp_path, clips):
    out = tmp_path / "x.mp4"
    with pytest.raises(BadOption):
        VideoWriter(out, 0, 32, 25)
    with pytest.raises(BadOption):
        VideoWriter(out, 32, 32, 0)
    with pytest.raises(BadOption):
        VideoWriter(tmp_path / "x.gif", 32, 32, 25)
    with pytest.raises(BadOption):
        VideoWriter(tmp_path, 32, 32, 25)
    with pytest.raises(InputNotFound):
        VideoWriter(out, 32, 32, 25, audio_path=tmp_path / "missing.wav")
    with pytest.raises(NoAudioStream, match="silent.mp4"):
        VideoWriter(out, 32, 32, 25, audio_path=clips["silent"])
    with pytest.raises(ValueError, match="shape"), VideoWriter(out, 32, 32, 25) as writer:
        writer.write(np.zeros((32, 33, 3), np.uint8))
    with pytest.raises(EncodeError, match="no frames"), VideoWriter(out, 32, 32, 25):
        pass
    assert list(tmp_path.iterdir()) == []
