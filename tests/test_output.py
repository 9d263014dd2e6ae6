"""Faithful output (issue 10, item 1): bit depth, colour tags, rate, size, rotation, timecode, codecs, containers,
kept streams; checked with our own probe, and with ffprobe where it is installed.

Sources are tiny lavfi clips made once per module; dubs use a fixed box and a stub generator (no weights), so each
dub costs one small encode."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from synth import make_audio, run_ffmpeg

from lipsync_cli import blend
from lipsync_cli.dub import DubOptions, dub
from lipsync_cli.errors import BadOption
from lipsync_cli.media import formats
from lipsync_cli.media.decode import FrameReader
from lipsync_cli.media.encode import VideoWriter
from lipsync_cli.media.formats import EncodeOptions, plan_output
from lipsync_cli.media.probe import Colour, probe

SIZE = (128, 96)
BOX = (48, 32, 80, 64)  # the face box of every dub here
NTSC = Fraction(30000, 1001)
SECONDS = 0.4  # 12 frames at 29.97
BT709 = Colour(range="tv", space="bt709", primaries="bt709", trc="bt709")
PQ = Colour(range="tv", space="bt2020nc", primaries="bt2020", trc="smpte2084")
# HDR10 static metadata of the PQ source: P3 D65 mastering display, 1000 cd/m2, MaxCLL 1000, MaxFALL 400
MASTERING = "master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1):max-cll=1000,400"


def _picture(fmt: str, c: Colour) -> str:
    """10 bits: a smooth picture with steps finer than 8 bits can hold (an 8-bit pipeline shows as banding);
    8 bits: testsrc's pattern (testsrc2 rounds odd sizes down). Then the colour tags ``c``."""
    pic = "format=yuv420p10le,geq=lum='64+X*6+Y*2':cb='512+X*2-Y':cr='512+Y*3-X'" if fmt.endswith("10le") \
        else f"format={fmt}"
    if c.tagged():
        pic += f",setparams=color_primaries={c.primaries}:color_trc={c.trc}:colorspace={c.space}:range={c.range}"
    return pic


def make_source(path: Path, colour: Colour = BT709, size: tuple[int, int] = SIZE, rotation: int | None = None,
                extras: bool = False, vcodec: str = "libx265", fmt: str = "yuv420p10le") -> Path:
    """A 29.97 fps clip with ``colour`` tags; ``extras``: a second audio track (fra, besides eng), an English srt
    subtitle, two chapters, a title and the start timecode 01:00:00:00."""
    w, h = size
    d = path.parent
    args = (["-noautorotate", "-display_rotation", str(rotation)] if rotation is not None else [])
    lavfi = "testsrc" if fmt == "yuv420p" else "nullsrc"
    args += ["-f", "lavfi", "-i", f"{lavfi}=size={w}x{h}:rate=30000/1001:duration={SECONDS}",
             "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={SECONDS}"]
    maps = ["-map", "0:v", "-map", "1:a"]
    if extras:
        (d / "sub.srt").write_text("1\n00:00:00,000 --> 00:00:00,300\nhello\n")
        (d / "chapters.txt").write_text(";FFMETADATA1\ntitle=Synthetic\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\n"
                                        "END=200\ntitle=One\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=200\nEND=400\n"
                                        "title=Two\n")
        args += ["-f", "lavfi", "-i", f"sine=frequency=660:sample_rate=48000:duration={SECONDS}",
                 "-i", str(d / "sub.srt"), "-i", str(d / "chapters.txt")]
        maps += ["-map", "2:a", "-map", "3:s", "-map_chapters", "4", "-map_metadata", "4",
                 "-c:s", "mov_text" if path.suffix != ".mkv" else "srt", "-metadata:s:a:1", "language=fra",
                 "-metadata:s:s:0", "language=eng", "-timecode", "01:00:00:00"]
    x265 = "log-level=error" + (f":hdr10=1:{MASTERING}" if colour == PQ else "")
    codec = ["-c:v", vcodec] + (["-x265-params", x265, "-tag:v", "hvc1"] if vcodec == "libx265" else [])
    run_ffmpeg([*args, *maps, "-vf", _picture(fmt, colour), *codec,
                "-c:a", "aac", "-metadata:s:a:0", "language=eng", str(path)])
    return path


class Stub:
    """A stand-in generator: the reference half of its input, darkened (a visible, deterministic mouth)."""

    def __new__(cls):
        import torch

        class _Stub(torch.nn.Module):
            def forward(self, mel, face):  # (B, 1, 80, 16), (B, 6, 96, 96) -> (B, 3, 96, 96)
                return face[:, 3:] * 0.3

        return _Stub()


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("postprod")
    return {
        "hevc10": make_source(d / "hevc10_709.mov", extras=True),
        "pq": make_source(d / "hevc10_pq.mp4", colour=PQ),
        # 4:2:0 at an odd size: FFV1 stores it (x264 and x265 cannot)
        "odd": make_source(d / "odd_641x359.mkv", size=(641, 359), vcodec="ffv1", fmt="yuv420p", colour=Colour()),
        "rotated": make_source(d / "rotated.mp4", size=(96, 128), rotation=90, vcodec="libx264", fmt="yuv420p"),
        "speech": make_audio(d / "speech.wav", seconds=SECONDS),
        "dir": d,
    }


def dub_to(source: Path, speech: Path, out: Path, notes: list | None = None, box=BOX, **encode) -> Path:
    opts = DubOptions(box=box, device="cpu", precision="fp32", preset="ultrafast", encode=EncodeOptions(**encode))
    dub(source, speech, out, opts, model=Stub(), notify=(notes.append if notes is not None else None))
    return out


def frames16(path: Path, depth: int = 16) -> np.ndarray:
    with FrameReader(path, depth=depth) as reader:
        return np.stack([f.astype(np.float64) * (257.0 if depth == 8 else 1.0) for f in reader])


def outside(box, shape, margin: int) -> np.ndarray:
    """Mask of the pixels farther than ``margin`` from the box (an encoder's blocks near it see the new mouth)."""
    x1, y1, x2, y2 = box
    m = np.ones(shape[:2], bool)
    m[max(0, y1 - margin):y2 + margin, max(0, x1 - margin):x2 + margin] = False
    return m


def round_trip_error(source: Path, out: Path, mask: np.ndarray, depth: int | None = None, **encode) -> float:
    """Mean |decoded - source| (16-bit units) over ``mask`` when the source's own frames go through the same
    encode as a dub (the encoder's round trip); ``depth`` forces the pipeline's bits per channel."""
    info = probe(source)
    plan = plan_output(info, EncodeOptions(**encode), out, crf=18, preset="ultrafast")
    if depth is not None:
        plan = dataclasses.replace(plan, depth=depth)
    with FrameReader(source, depth=plan.depth) as reader, \
            VideoWriter(out, info.width, info.height, info.fps, plan=plan) as writer:
        for frame in reader:
            writer.write(frame)
    return float(np.abs(frames16(out) - frames16(source))[:, mask].mean())


# --------------------------------------------------------------------------------------------------------------
# the probe reads what the output rules need


def test_probe_reads_pix_fmt_colour_rate_streams_chapters_timecode(src):
    info = probe(src["hevc10"])
    assert (info.codec, info.pix_fmt, info.colour) == ("hevc", "yuv420p10le", BT709)
    assert (info.rate, info.n_frames, info.timecode, info.chapters) == (NTSC, 12, "01:00:00:00", 2)
    kinds = [(s.kind, s.language) for s in info.streams if s.kind != "Data"]
    assert kinds == [("Video", ""), ("Audio", "eng"), ("Audio", "fra"), ("Subtitle", "eng")]
    assert probe(src["pq"]).colour == PQ
    assert probe(src["rotated"]).rotation == 90 and (probe(src["rotated"]).width, probe(src["rotated"]).height) \
        == (128, 96)


# --------------------------------------------------------------------------------------------------------------
# depth, colour, rate, pixels


def test_10bit_bt709_dub_keeps_depth_tags_rate_and_pixels_outside_the_box(src, tmp_path):
    out = dub_to(src["hevc10"], src["speech"], tmp_path / "dub.mov", vcodec="libx265")
    info = probe(out)
    assert (info.codec, info.pix_fmt, info.colour) == ("hevc", "yuv420p10le", BT709)
    assert (info.rate, info.n_frames, info.width, info.height) == (NTSC, 12, *SIZE)
    assert info.timecode == "01:00:00:00"  # kept without --keep-streams: it belongs to the picture
    got, ref = frames16(out), frames16(src["hevc10"])
    mask = outside(BOX, got.shape[1:], margin=16)
    dub_err = float(np.abs(got - ref)[:, mask].mean())
    rt16 = round_trip_error(src["hevc10"], tmp_path / "rt16.mov", mask, vcodec="libx265")
    rt8 = round_trip_error(src["hevc10"], tmp_path / "rt8.mov", mask, depth=8, vcodec="libx265")
    assert dub_err <= 1.2 * rt16 + 16, (dub_err, rt16)  # no more than the encoder's own round trip
    assert rt16 < 0.7 * rt8, (rt16, rt8)  # and 16 bits through the pipeline is what keeps it that small
    x1, y1, x2, y2 = BOX
    mouth = np.abs(got - ref)[:, y1 + (y2 - y1) // 2:y2, x1 + 4:x2 - 4].mean()
    assert mouth > 20 * 257, mouth  # the mouth was redrawn


def test_pq_tags_and_hdr10_metadata_survive_another_pixel_format(src, tmp_path):
    from lipsync_cli.media.probe import hdr_metadata

    out = dub_to(src["pq"], src["speech"], tmp_path / "pq.mp4", vcodec="libx265", pix_fmt="yuv444p12le")
    info = probe(out)
    assert (info.pix_fmt, info.colour, info.rate, info.n_frames) == ("yuv444p12le", PQ, NTSC, 12)
    meta = hdr_metadata(info)
    assert meta is not None and meta == hdr_metadata(probe(src["pq"]))
    assert (meta.max_luminance, meta.max_cll, meta.max_fall, meta.green) == (1000.0, 1000, 400, (0.265, 0.69))
    got, ref = frames16(out), frames16(src["pq"])
    mask = outside(BOX, got.shape[1:], margin=16)
    assert np.abs(got - ref)[:, mask].mean() < 2 * 257  # converted with the BT.2020 matrix, not re-interpreted
    notes: list[str] = []
    out8 = dub_to(src["pq"], src["speech"], tmp_path / "pq8.mp4", notes, vcodec="libx264", pix_fmt="yuv420p")
    info8 = probe(out8)
    assert (info8.pix_fmt, info8.colour) == ("yuv420p", PQ)
    assert any("only written with libx265" in n for n in notes), notes  # x264 cannot carry it: said
    assert np.abs(frames16(out8) - ref)[:, mask].mean() < 3 * 257


def test_8bit_untagged_source_stays_untagged_yuv420p(tmp_path):
    from synth import make_video

    source = make_video(tmp_path / "plain.mp4", seconds=SECONDS, fps=25, size=SIZE)
    plan = plan_output(probe(source), EncodeOptions(), tmp_path / "o.mp4")
    assert (plan.pix_fmt, plan.depth, plan.notes) == ("yuv420p", 8, ())
    assert not any(a.startswith("-color") for a in plan.video_args)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_still_image_becomes_8bit_420_without_rgb_tags(tmp_path, suffix):
    from synth import make_image

    image = make_image(tmp_path / f"still{suffix}")  # png: rgb24(pc, gbr); jpg: yuvj444p(pc, bt470bg)
    plan = plan_output(probe(image), EncodeOptions(), tmp_path / "o.mp4")
    assert (plan.pix_fmt, plan.depth) == ("yuv420p", 8)
    tags = dict(zip(plan.video_args[::2], plan.video_args[1::2]))
    assert tags.get("-color_range") == "tv"  # limited range, as players expect (a JPEG is full range)


def test_odd_size_is_kept_exact_in_444_and_said(src, tmp_path):
    notes: list[str] = []
    out = dub_to(src["odd"], src["speech"], tmp_path / "odd.mp4", notes=notes, box=(300, 150, 364, 214))
    info = probe(out)
    assert (info.width, info.height, info.pix_fmt, info.n_frames) == (641, 359, "yuv444p", 12)
    assert any("641x359" in n and "yuv444p" in n for n in notes), notes
    plan = plan_output(probe(src["odd"]), EncodeOptions(pix_fmt="yuv420p"), tmp_path / "odd.mp4")
    assert plan.encoded_size == (642, 360) and "padded to 642x360" in plan.notes[0]  # the user's 4:2:0: padded
    for vcodec, suffix in (("dnxhd", ".mov"), ("prores_ks", ".mov"), ("libvpx-vp9", ".mkv")):  # any size
        plan = plan_output(probe(src["odd"]), EncodeOptions(vcodec=vcodec), tmp_path / f"odd{suffix}")
        assert (plan.encoded_size, plan.notes, plan.pix_fmt[:7]) == ((641, 359), (), "yuv422p" if vcodec !=
                                                                      "libvpx-vp9" else "yuv420p")


@pytest.mark.parametrize(("vcodec", "suffix"), [("dnxhd", ".mov"), ("prores_ks", ".mov"), ("libx264", ".mp4")])
def test_untagged_source_keeps_its_colours(src, tmp_path, vcodec, suffix):
    box = (300, 150, 364, 214)
    out = dub_to(src["odd"], src["speech"], tmp_path / f"u{suffix}", box=box, vcodec=vcodec)
    got, ref = frames16(out, depth=8), frames16(src["odd"], depth=8)
    assert got.shape == ref.shape  # 641x359 kept
    mask = outside(box, got.shape[1:], margin=16)
    err = np.abs(got - ref)[:, mask].reshape(-1, 3).mean(0) / 257  # per channel, 8-bit levels
    assert err.max() < 2, err  # a matrix mix-up shifts one channel by ~20 levels


def test_real_clip_keeps_its_tags_and_colours(src, tmp_path):
    from conftest import media

    clip = media("liveportrait_d12.mp4")  # 512x512, tagged tv smpte170m/smpte170m/bt709
    box = (170, 170, 234, 234)
    out = dub_to(clip, src["speech"], tmp_path / "real.mp4", box=box)
    info, src_info = probe(out), probe(clip)
    assert (info.colour, info.pix_fmt, info.rate) == (src_info.colour, "yuv420p", src_info.rate)
    got = frames16(out, depth=8)
    with FrameReader(clip, max_frames=len(got)) as reader:
        ref = np.stack([f.astype(np.float64) * 257 for f in reader])
    err = np.abs(got - ref)[:, outside(box, got.shape[1:], margin=16)].reshape(-1, 3).mean(0) / 257
    assert err.max() < 3.5, err  # crf 18 ultrafast noise (measured 2.3 at most), not a colour shift


def test_rotation_kept_as_metadata(src, tmp_path):
    out = dub_to(src["rotated"], src["speech"], tmp_path / "rot.mp4", box=(40, 24, 88, 72))
    info = probe(out)
    assert info.rotation == 90 and (info.width, info.height) == (128, 96)
    got, ref = frames16(out, depth=8), frames16(src["rotated"], depth=8)  # both as displayed
    mask = outside((40, 24, 88, 72), got.shape[1:], margin=16)
    assert np.abs(got - ref)[:, mask].mean() < 3 * 257


# --------------------------------------------------------------------------------------------------------------
# codecs and containers


@pytest.mark.parametrize(("vcodec", "suffix", "profile", "codec", "pix_fmt"), [
    ("prores_ks", ".mov", None, "prores", "yuv422p10le"),  # ProRes 422 HQ by default
    ("prores_ks", ".mov", "4444", "prores", "yuv444p12le"),  # ffmpeg decodes ProRes 4444 at 12 bits
    ("libvpx-vp9", ".mkv", None, "vp9", "yuv420p10le"),
])
def test_editing_codecs_keep_depth_and_tags(src, tmp_path, vcodec, suffix, profile, codec, pix_fmt):
    out = dub_to(src["hevc10"], src["speech"], tmp_path / f"e{suffix}", vcodec=vcodec, profile=profile)
    info = probe(out)
    assert (info.codec, info.pix_fmt, info.colour, info.rate, info.n_frames) == (codec, pix_fmt, BT709, NTSC, 12)


def test_dnxhr_profile_and_minimum_size(src, tmp_path):
    plan = plan_output(probe(src["odd"]), EncodeOptions(vcodec="dnxhd", profile="dnxhr_hq"), tmp_path / "d.mov")
    assert plan.pix_fmt == "yuv422p" and "dnxhr_hq" in plan.video_args
    with pytest.raises(BadOption, match="at least 256x120"):
        plan_output(probe(src["hevc10"]), EncodeOptions(vcodec="dnxhd"), tmp_path / "d.mov")


@pytest.mark.parametrize(("encode", "out", "message"), [
    (dict(vcodec="prores_ks"), "o.mp4", "does not go in .mp4 files; use .mkv or .mov"),
    (dict(vcodec="dnxhd", profile="hq"), "o.mov", "not a dnxhd profile"),
    (dict(vcodec="libx264", pix_fmt="yuv422p12le"), "o.mp4", "libx264 cannot encode --pix-fmt yuv422p12le"),
    (dict(vcodec="prores_ks", profile="4444", pix_fmt="yuv422p10le"), "o.mov", "--profile 4444 encodes"),
    (dict(vcodec="xvid"), "o.mp4", "not one of libx264"),
    (dict(acodec="flac"), "o.mov", "flac does not go in .mov"),
    (dict(acodec="mp3"), "o.mp4", "--acodec 'mp3' is not one of"),
    (dict(language="english"), "o.mp4", "ISO 639-2"),
    (dict(vcodec="libx264"), "o.avi", "must end in one of"),
])
def test_refused_before_any_work(encode, out, message):
    with pytest.raises(BadOption, match=message.replace("(", r"\(").replace("+", r"\+")):
        DubOptions(encode=EncodeOptions(**encode)).validate(out)


def test_hardware_encoder_refused_where_absent(monkeypatch):
    monkeypatch.setattr(formats, "encoders", lambda: {"libx264": "V", "h264_nvenc": "V"})
    with pytest.raises(BadOption, match="no hevc_videotoolbox encoder; it has: libx264, h264_nvenc"):
        EncodeOptions(vcodec="hevc_videotoolbox").validate("o.mp4")
    monkeypatch.setattr(formats, "_hardware_opens", lambda name: "Cannot load libcuda.so.1")
    with pytest.raises(BadOption, match=r"--vcodec hardware: no hardware H.264 encoder works.*lists h264_nvenc"):
        EncodeOptions(vcodec="hardware").validate("o.mp4")
    monkeypatch.setattr(formats, "_hardware_opens", lambda name: None)
    assert formats.resolve_vcodec("hardware") == "h264_nvenc"
    monkeypatch.undo()
    if formats._hardware_opens("h264_nvenc") is None:
        pytest.skip("h264_nvenc works on this machine")
    with pytest.raises(BadOption, match="lists h264_nvenc but cannot open it"):
        EncodeOptions(vcodec="h264_nvenc").validate("o.mp4")


# --------------------------------------------------------------------------------------------------------------
# audio and kept streams


def test_keep_streams_new_audio_first_default_labelled(src, tmp_path):
    out = dub_to(src["hevc10"], src["speech"], tmp_path / "keep.mkv", keep_streams=True, language="spa")
    info = probe(out)
    streams = [(s.kind, s.codec, s.language, s.default) for s in info.streams]
    assert streams[1:] == [("Audio", "aac", "spa", True), ("Audio", "aac", "eng", False),
                           ("Audio", "aac", "fra", False), ("Subtitle", "subrip", "eng", True)], streams
    assert (info.chapters, info.timecode, info.n_frames) == (2, "01:00:00:00", 12)
    out_mov = dub_to(src["hevc10"], src["speech"], tmp_path / "keep.mov", keep_streams=True)
    kinds = [(s.kind, s.codec) for s in probe(out_mov).streams if s.kind != "Data"]
    assert kinds == [("Video", "h264"), ("Audio", "aac"), ("Audio", "aac"), ("Audio", "aac"),
                     ("Subtitle", "mov_text")]
    plain = probe(dub_to(src["hevc10"], src["speech"], tmp_path / "plain.mkv"))
    assert [s.kind for s in plain.streams] == ["Video", "Audio"] and plain.chapters == 0


@pytest.mark.parametrize(("acodec", "suffix", "codec"), [("pcm", ".mov", "pcm_s16le"), ("flac", ".mkv", "flac"),
                                                         ("copy", ".mkv", "pcm_s16le")])
def test_acodec(src, tmp_path, acodec, suffix, codec):
    info = probe(dub_to(src["hevc10"], src["speech"], tmp_path / f"a{suffix}", acodec=acodec))
    assert info.audio is not None and info.audio.codec == codec


def test_acodec_copy_refused_when_the_container_cannot_hold_it(src, tmp_path):
    speech = make_audio(tmp_path / "speech.ogg", seconds=SECONDS, extra=["-c:a", "libvorbis"])
    from lipsync_cli.media.probe import probe_audio

    with pytest.raises(BadOption, match="vorbis audio does not go in .mov"):
        plan_output(probe(src["hevc10"]), EncodeOptions(acodec="copy"), tmp_path / "o.mov",
                    audio=probe_audio(speech))


# --------------------------------------------------------------------------------------------------------------
# blending at 16 bits, and ffprobe's view where it exists


def test_blend_16bit_frames():
    rng = np.random.default_rng(0)
    f16 = rng.integers(0, 65536, (64, 64, 3), dtype=np.uint16)
    crop = blend.crop_face(f16, (0, 0, 64, 64))
    assert crop.dtype == np.uint8  # the generator sees 8 bits
    f8 = ((f16.astype(np.uint32) + 128) // 257).astype(np.uint8)
    assert np.abs(crop.astype(int) - blend.crop_face(f8, (0, 0, 64, 64)).astype(int)).max() <= 1
    face = np.full((96, 96, 3), 200, np.uint8)
    for mode in ("feather", "paste"):
        frame = f16.copy()
        blend.blend(frame, face, (8, 8, 56, 56), mode)
        assert frame.dtype == np.uint16
        assert np.array_equal(frame[:8], f16[:8])  # outside the box: untouched, all 16 bits
        assert abs(int(frame[50, 32, 0]) - 200 * 257) <= 2 * 257  # the mouth, at the 16-bit scale


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe is not installed")
def test_ffprobe_agrees(src, tmp_path):
    out = dub_to(src["hevc10"], src["speech"], tmp_path / "fp.mov", vcodec="libx265", keep_streams=True,
                 language="spa")
    doc = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_chapters", "-of", "json",
                                     str(out)], capture_output=True, text=True, check=True).stdout)
    v = doc["streams"][0]
    assert (v["pix_fmt"], v["color_primaries"], v["color_transfer"], v["color_space"], v["color_range"]) == \
        ("yuv420p10le", "bt709", "bt709", "bt709", "tv")
    assert v["r_frame_rate"] == "30000/1001" and len(doc["chapters"]) == 2
    audio = [s for s in doc["streams"] if s["codec_type"] == "audio"]
    assert audio[0]["tags"]["language"] == "spa" and audio[0]["disposition"]["default"] == 1


# --------------------------------------------------------------------------------------------------------------
# the CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    import os
    import sys

    env = {**os.environ, "LIPSYNC_OFFLINE": "1"}
    env.pop("LIPSYNC_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "lipsync_cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_cli_refuses_a_container_mismatch_in_one_line(src, tmp_path):
    out = tmp_path / "o.mp4"
    # no weights are available offline: the option mistake is still what is reported, before any work
    proc = _cli("dub", str(src["hevc10"]), str(src["speech"]), "-o", str(out), "--vcodec", "prores_ks", "-q")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "prores_ks does not go in .mp4 files; use .mkv or .mov" in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_cli_dub_10bit_keep_streams(src, tmp_path, fake_ckpt):
    out = tmp_path / "cli.mkv"
    proc = _cli("dub", str(src["hevc10"]), str(src["speech"]), "-o", str(out), "--checkpoint",
                str(fake_ckpt("wav2lip")), "--box", *map(str, BOX), "--device", "cpu", "--preset", "ultrafast",
                "--vcodec", "libx265", "--keep-streams", "--language", "spa")
    assert proc.returncode == 0, proc.stderr
    assert "libx265 yuv420p10le (10-bit) in matroska" in proc.stderr
    info = probe(out)
    assert (info.pix_fmt, info.colour, info.rate, info.n_frames, info.chapters) == ("yuv420p10le", BT709, NTSC,
                                                                                    12, 2)
    assert [(s.kind, s.language) for s in info.streams][1:3] == [("Audio", "spa"), ("Audio", "eng")]


# ISO 639-2: .mov keeps only QuickTime's table (ger, chi: B codes; fra: T); MP4 the T code; Matroska any
_SAME = {"ger": "deu", "chi": "zho", "fre": "fra"}


@pytest.mark.parametrize("suffix", [".mov", ".mp4", ".mkv"])
def test_language_tag_survives_every_container(src, tmp_path, suffix):
    speech = src["speech"]
    for lang in ("deu", "zho", "fra"):
        out = dub_to(src["hevc10"], speech, tmp_path / f"{lang}{suffix}", vcodec="libx264", language=lang)
        audio = [s for s in probe(out).streams if s.kind == "Audio"]
        assert _SAME.get(audio[0].language, audio[0].language) == lang, (suffix, lang, audio[0].language)
        if shutil.which("ffprobe"):
            doc = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(out)],
                                            capture_output=True, text=True, check=True).stdout)
            tag = [s for s in doc["streams"] if s["codec_type"] == "audio"][0]["tags"]["language"]
            assert _SAME.get(tag, tag) == lang


def test_language_a_mov_cannot_carry_is_refused_before_work(src, tmp_path):
    with pytest.raises(BadOption, match="mri: .mov files cannot carry"):
        dub_to(src["hevc10"], src["speech"], tmp_path / "m.mov", language="mri")
    assert not (tmp_path / "m.mov").exists()


@pytest.mark.parametrize("acodec", ["pcm", "copy"])
def test_pcm_audio_is_refused_for_mp4_before_any_work(tmp_path, acodec, fake_ckpt):
    import sys

    from synth import make_video

    video, speech = make_video(tmp_path / "v.mp4", seconds=1.0, fps=25), make_audio(tmp_path / "s.wav", seconds=1.0)
    out = tmp_path / "o.mp4"
    r = subprocess.run([sys.executable, "-m", "lipsync_cli", "dub", str(video), str(speech), "-o", str(out),
                        "--box", "0", "0", "64", "64", "--acodec", acodec, "--offline", "--checkpoint",
                        str(fake_ckpt("wav2lip"))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "does not go in .mp4 files" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2
    assert not out.exists() and not list(tmp_path.glob(".*o.mp4*"))
    assert "start-up" not in r.stderr and "frames/s" not in r.stderr  # refused before any frame was made
