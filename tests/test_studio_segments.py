"""Only the lines you replace (issue 22, items 3-4): `--segments` from CSV, SRT and OTIO, `--start/--end`, `--me`,
`--timeline-out`, and the mistakes refused before any work.

A 20 s lavfi clip (128x96, a 440 Hz tone as its sound), three 1 s lines of real speech, a fixed box, the fake
Wav2Lip weights, lossless x264 (--crf 0) and PCM in .mov so "the source's frames / sound" can be compared."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from checks import read_frames
from conftest import media
from synth import make_video, run_ffmpeg

BOX = (32, 16, 96, 88)
FPS = 25
LINES = [(2.0, 3.0), (8.0, 9.0), (14.5, 15.5)]  # seconds
SR = 16000


def run(*args):
    return subprocess.run([sys.executable, "-m", "lipsync_cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    import soundfile

    from lipsync_cli.audio import load_audio

    d = tmp_path_factory.mktemp("segments")
    make_video(d / "src.mp4", seconds=20, size=(128, 96), extra=["-crf", "0"])
    speech = load_audio(media("sadtalker_RD_Radio31_000.wav"))
    track = np.zeros(20 * SR, np.float32)  # the full-length dub track: the lines at their places
    rows = ["start,end,audio"]
    for k, (a, b) in enumerate(LINES):
        line = speech[int(k * SR):int((k + 1) * SR)]
        soundfile.write(str(d / f"line{k}.wav"), line, SR, subtype="FLOAT")
        track[int(a * SR):int(a * SR) + len(line)] = line
        rows.append(f"{a},{b},line{k}.wav")
    soundfile.write(str(d / "dub.wav"), track, SR, subtype="FLOAT")
    (d / "lines.csv").write_text("\n".join(rows) + "\n")
    srt = [f"{k + 1}\n00:00:{int(a):02d},{int(a % 1 * 1000):03d} --> 00:00:{int(b):02d},{int(b % 1 * 1000):03d}\n"
           f"line {k}\n" for k, (a, b) in enumerate(LINES)]
    (d / "lines.srt").write_text("\n".join(srt))
    run_ffmpeg(["-i", str(d / "src.mp4"), "-vf", "format=rgb24,format=yuv420p", "-c:v", "libx264", "-crf", "0",
                "-preset", "veryfast", str(d / "roundtrip.mp4")])
    return {"dir": d, "src": read_frames(d / "src.mp4"), "roundtrip": read_frames(d / "roundtrip.mp4"),
            "src_audio": load_audio(d / "src.mp4"), "speech": track}


def dub(clip, name, *args):
    out = clip["dir"] / f"{name}.mov"
    proc = run("dub", clip["dir"] / "src.mp4", *args, "-o", out, "--checkpoint", clip["ckpt"], "--box", *BOX,
               "--device", "cpu", "--precision", "fp32", "--crf", "0", "--acodec", "pcm")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def csv_out(clip, fake_ckpt):
    clip["ckpt"] = fake_ckpt("wav2lip")
    return dub(clip, "csv", "--segments", clip["dir"] / "lines.csv", "--timeline-out", clip["dir"] / "dubbed.otio")


def rel_error(got, want) -> float:
    """RMS of the difference over the RMS of ``want`` (the sound went 16 -> 48 -> 16 kHz and through 16-bit PCM)."""
    return float(np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want ** 2)))


def frame_spans():
    return [(int(np.ceil(a * FPS)), int(np.ceil(b * FPS))) for a, b in LINES]


def mouth_diff(a, b):
    x1, y1, x2, y2 = BOX
    return float(np.abs(a[y1 + (y2 - y1) // 2:y2, x1:x2].astype(np.int16) - b[y1 + (y2 - y1) // 2:y2, x1:x2]).mean())


@pytest.mark.slow
def test_segments_csv_only_the_lines_change(clip, csv_out):
    from lipsync_cli.audio import load_audio

    out, src = read_frames(csv_out), clip["src"]
    assert len(out) == len(src) == 500
    inside = np.zeros(len(src), bool)
    for a, b in frame_spans():
        inside[a:b] = True
    rt = clip["roundtrip"]  # the source through RGB and back into lossless x264: what "unchanged" can be here
    noise = max(float(np.abs(rt[i].astype(np.int16) - src[i]).mean()) for i in range(0, len(src), 25))
    outside = [float(np.abs(out[i].astype(np.int16) - src[i]).mean()) for i in np.flatnonzero(~inside)]
    assert max(outside) <= noise + 0.2, (max(outside), noise)  # the source's frames, up to that rounding
    redrawn = [mouth_diff(out[i], src[i]) for a, b in frame_spans() for i in range(a + 3, b - 3)]
    assert min(redrawn) > 10, min(redrawn)
    sound = load_audio(csv_out)  # 16 kHz mono
    ref, speech = clip["src_audio"], clip["speech"]
    n = min(len(sound), len(ref))
    quiet = np.ones(n, bool)
    for a, b in LINES:
        quiet[int(a * SR) - 160:int(b * SR) + 160] = False
    assert np.abs(sound[:n][quiet] - ref[:n][quiet]).max() < 2e-3  # the source's own sound
    for a, b in LINES:
        part = slice(int(a * SR) + 160, int(b * SR) - 160)
        assert rel_error(sound[part], speech[part]) < 0.1  # the line alone (no --me)
        assert np.abs(sound[part] - ref[part]).mean() > 0.05


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["srt", "otio"])
def test_srt_and_otio_give_the_csv_result(clip, csv_out, kind):
    from lipsync_cli.audio import load_audio

    if kind == "srt":
        out = dub(clip, "srt", clip["dir"] / "dub.wav", "--segments", clip["dir"] / "lines.srt")
    else:  # the timeline the CSV dub wrote, read back: its audio track's clips are the lines
        out = dub(clip, "otio", "--segments", clip["dir"] / "dubbed.otio")
    a, b = read_frames(out), read_frames(csv_out)
    d = [float(np.abs(x.astype(np.int16) - y).max()) for x, y in zip(a, b)]
    assert len(a) == len(b) and max(d) <= 1, [(i, v) for i, v in enumerate(d) if v > 1]
    sa, sb = load_audio(out), load_audio(csv_out)
    assert len(sa) == len(sb) and np.abs(sa - sb).max() < 2e-3


def test_timeline_out_otio_and_edl(clip, csv_out):
    import opentimelineio as otio

    tl = otio.adapters.read_from_file(str(clip["dir"] / "dubbed.otio"))
    clips = [(c.range_in_parent().start_time.to_seconds(), c.range_in_parent().end_time_exclusive().to_seconds())
             for t in tl.audio_tracks() for c in t.find_clips()]
    assert clips == LINES
    assert tl.video_tracks()[0].find_clips()[0].duration().to_seconds() == 20.0


def test_start_end_with_me_and_edl(clip, fake_ckpt):
    """--start/--end: one line from AUDIO (aligned with the video); --me under it; the EDL of it."""
    from lipsync_cli.audio import load_audio

    clip["ckpt"] = fake_ckpt("wav2lip")
    me = clip["dir"] / "src.mp4"  # its own tone as the M&E stem: inside the line = line + tone
    out = dub(clip, "startend", clip["dir"] / "dub.wav", "--start", "00:00:08:00", "--end", "9", "--me", me,
              "--timeline-out", clip["dir"] / "dubbed.edl")
    frames = read_frames(out)
    assert mouth_diff(frames[210], clip["src"][210]) > 10 and mouth_diff(frames[100], clip["src"][100]) < 3
    sound, ref, speech = load_audio(out), clip["src_audio"], clip["speech"]
    part = slice(int(8 * SR) + 160, int(9 * SR) - 160)
    assert rel_error(sound[part], speech[part] + ref[part]) < 0.1
    edl = (clip["dir"] / "dubbed.edl").read_text()
    assert "00:00:08:00 00:00:09:00" in edl, edl


BAD = {
    "overlap": ("start,end,audio\n1,3,line0.wav\n2.5,4,line1.wav\n", "overlaps"),
    "range": ("start,end,audio\n19,21,line0.wav\n", "ends after the video"),
    "timecode": ("start,end,audio\n00:00:01:27,00:00:02:00,line0.wav\n", "frame 27"),
    "missing": ("start,end,audio\n1,2,nope.wav\n", "nope.wav"),
    "no_cues": ("", "no segments"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_segments_one_line_before_any_work(clip, fake_ckpt, case):
    text, words = BAD[case]
    seg = clip["dir"] / (f"bad_{case}.srt" if case == "no_cues" else f"bad_{case}.csv")
    seg.write_text(text)
    out = clip["dir"] / f"bad_{case}.mp4"
    proc = run("dub", clip["dir"] / "src.mp4", "-o", out, "--segments", seg, "--checkpoint", fake_ckpt("wav2lip"),
               "--box", *BOX, "--device", "cpu")
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) <= 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() and not list(clip["dir"].glob(f".bad_{case}*"))


def test_studio_options_are_batch_manifest_columns(clip, tmp_path):
    """silence, silence_fade, segments, start/end, me, timeline_out: DubOptions fields, so manifest columns, paths
    relative to the manifest, checked with the dub rules."""
    from lipsync_cli.batch import ManifestError, load_manifest

    d = clip["dir"]
    man = tmp_path / "jobs.csv"
    man.write_text("video,audio,silence,silence_fade,segments,start,end,me,timeline_out\n"
                   f"{d / 'src.mp4'},{d / 'dub.wav'},source,5,{d / 'lines.csv'},,,src.mp4,a.otio\n"
                   f"{d / 'src.mp4'},{d / 'dub.wav'},hold,,,1.5,00:00:03:00,,\n"
                   f"{d / 'src.mp4'},{d / 'dub.wav'},still,,,,,,\n"
                   f"{d / 'src.mp4'},{d / 'dub.wav'},,,{d / 'lines.txt'},,,,\n")
    with pytest.raises(ManifestError) as err:
        load_manifest(man, tmp_path / "out")
    problems = dict(err.value.problems)
    assert sorted(problems) == [4, 5] and "still" in problems[4] and "lines.txt" in problems[5]
    a, b = load_manifest(man, tmp_path / "out", skip_invalid=True).jobs
    assert (a.options.silence, a.options.silence_fade, a.options.segments, a.options.me, a.options.timeline_out) == (
        "source", 5, d / "lines.csv", tmp_path / "src.mp4", tmp_path / "a.otio")
    assert (b.options.silence, b.options.start, b.options.end) == ("hold", "1.5", "00:00:03:00")


def test_timeline_at_another_frame_rate_is_refused(clip, fake_ckpt, tmp_path):
    import opentimelineio as otio

    tl = otio.schema.Timeline(name="24p")
    track = otio.schema.Track(name="A1", kind=otio.schema.TrackKind.Audio)
    track.append(otio.schema.Clip(name="l0", media_reference=otio.schema.ExternalReference(
        target_url=(clip["dir"] / "line0.wav").as_uri()), source_range=otio.opentime.TimeRange(
        otio.opentime.RationalTime(0, 24), otio.opentime.RationalTime(24, 24))))
    tl.tracks.append(track)
    otio.adapters.write_to_file(tl, str(tmp_path / "t24.otio"))
    out = tmp_path / "o.mp4"
    proc = run("dub", clip["dir"] / "src.mp4", "-o", out, "--segments", tmp_path / "t24.otio", "--box", *BOX,
               "--checkpoint", fake_ckpt("wav2lip"), "--device", "cpu")
    assert proc.returncode == 2 and "24 fps" in proc.stderr and "25 fps" in proc.stderr, proc.stderr
    assert not out.exists()


def test_drop_frame_timecodes_count_the_dropped_frame_numbers():
    # 29.97 fps drop-frame ("HH:MM:SS;FF") skips frame numbers 00 and 01 each minute but every tenth: ten minutes
    # are 17982 frames, not 18000 (read as non-drop, a line at 00:10:00;00 landed 0.6 s late)
    from lipsync_cli.errors import BadOption
    from lipsync_cli.segments import parse_time

    ntsc = 30000 / 1001
    assert parse_time("00:10:00;00", ntsc, "--start") == pytest.approx(17982 / ntsc)
    assert parse_time("00:01:00;02", ntsc, "--start") == pytest.approx(1800 / ntsc)
    assert parse_time("00:00:59;29", ntsc, "--start") == pytest.approx(1799 / ntsc)
    assert parse_time("01:00:00;00", ntsc, "--start") == pytest.approx(107892 / ntsc)
    assert parse_time("00:01:00;04", 60000 / 1001, "--start") == pytest.approx(3600 / (60000 / 1001))
    assert parse_time("00:10:00:00", ntsc, "--start") == pytest.approx(18000 / ntsc)  # ':' stays non-drop
    with pytest.raises(BadOption, match="drop-frame"):
        parse_time("00:01:00;01", ntsc, "--start")  # a frame number drop-frame skips
    with pytest.raises(BadOption, match="drop-frame"):
        parse_time("00:00:01;00", 25.0, "--start")  # drop-frame exists at 29.97 and 59.94 only
