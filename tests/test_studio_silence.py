"""The mouth in the pauses of the speech (issue 22, item 2): `--silence hold|model|source` and the cross-fades.

The source is a real talking head (liveportrait_d12, 128x128, 4 s) with a fixed box; the speech is real speech with
two 1 s pauses (digital silence, room noise at -50 dBFS), see ``synth.speech_with_pauses``."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from checks import read_frames
from conftest import media
from synth import run_ffmpeg, speech_with_pauses

BOX = (34, 28, 98, 104)
FADE = 3


def mouth(frame: np.ndarray) -> np.ndarray:
    """The core of the mouth region, where the feather mask is 1: the generator's pixels only."""
    x1, y1, x2, y2 = BOX
    h, w = y2 - y1, x2 - x1
    return frame[y1 + int(0.6 * h):y1 + int(0.9 * h), x1 + int(0.2 * w):x2 - int(0.2 * w)].astype(np.int16)


def diff(a, b) -> float:
    return float(np.abs(mouth(a) - mouth(b)).mean())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("silence")
    run_ffmpeg(["-i", str(media("liveportrait_d12.mp4")), "-t", "4", "-vf", "scale=128:128", "-an",
                "-c:v", "libx264", "-crf", "18", "-pix_fmt", "yuv420p", str(d / "face.mp4")])
    # the source's own round trip through lipsync's encoder (lossless x264: RGB -> yuv420p -> RGB rounding only)
    run_ffmpeg(["-i", str(d / "face.mp4"), "-vf", "format=rgb24,format=yuv420p", "-c:v", "libx264", "-crf", "0",
                "-preset", "veryfast", str(d / "roundtrip.mp4")])
    truth = speech_with_pauses(d / "speech.wav", media("sadtalker_RD_Radio31_000.wav"), seg=0.6)
    from lipsync_cli.audio import load_audio
    from lipsync_cli.vad import speech_activity

    pauses = [p for p in speech_activity(load_audio(d / "speech.wav"), 95, 25).pauses() if p[0] > 0]
    assert all(abs(p - q) <= 2 for got, want in zip(pauses, truth) for p, q in zip(got, want)), (pauses, truth)
    return {"dir": d, "video": d / "face.mp4", "speech": d / "speech.wav", "pauses": pauses,
            "src": read_frames(d / "face.mp4"), "roundtrip": read_frames(d / "roundtrip.mp4")}


def dub_cli(clip, fake_ckpt, mode: str) -> tuple[list[np.ndarray], str]:
    out = clip["dir"] / f"{mode}.mp4"
    proc = subprocess.run([sys.executable, "-m", "lipsync_cli", "dub", str(clip["video"]), str(clip["speech"]),
                           "-o", str(out), "--checkpoint", str(fake_ckpt("wav2lip")), "--box", *map(str, BOX),
                           "--device", "cpu", "--precision", "fp32", "--silence", mode,
                           "--silence-fade", str(FADE), "--crf", "0"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return read_frames(out), proc.stderr + proc.stdout


def cores(clip):
    """The frames of each pause beyond its fades."""
    return [range(a + FADE, b - FADE) for a, b in clip["pauses"]]


@pytest.mark.slow
def test_cli_hold_mouth_still_in_pauses(clip, fake_ckpt):
    frames, log = dub_cli(clip, fake_ckpt, "hold")
    m = re.search(r"--silence hold: (\d+) pause\(s\), (\d+) frames", log)
    assert m and m.group(1) == "2", log
    noise = max(0.5, np.mean([diff(clip["roundtrip"][i], clip["src"][i]) for i in range(len(frames))]))
    for core in cores(clip):
        steps = [diff(frames[i + 1], frames[i]) for i in core[:-1]]
        assert max(steps) < noise, (steps, noise)  # the same mouth, up to the encoder's noise
    src_steps = [diff(clip["src"][i + 1], clip["src"][i]) for i in cores(clip)[0][:-1]]
    assert np.mean(src_steps) > 3 * noise  # while the source's own mouth moves


@pytest.mark.slow
def test_cli_source_frames_pass_in_pauses_with_fades(clip, fake_ckpt):
    frames, _ = dub_cli(clip, fake_ckpt, "source")
    ref = clip["roundtrip"]
    for (a, b), core in zip(clip["pauses"], cores(clip)):
        inside = [diff(frames[i], ref[i]) for i in core]
        noise = max(diff(ref[i], clip["src"][i]) for i in core)
        assert max(inside) <= noise + 0.5, (inside, noise)  # the source's frames (the round trip's noise only)
        before = [diff(frames[i], ref[i]) for i in range(a - 3, a)]
        assert min(before) > 15, before  # speech: re-drawn
        fade_in = [diff(frames[i], ref[i]) for i in range(a, a + FADE)]
        fade_out = [diff(frames[i], ref[i]) for i in range(b - FADE, b)]
        assert max(inside) < fade_in[-1] < fade_in[0] < min(before), fade_in  # between, no jump
        assert max(inside) < fade_out[0] < fade_out[-1] < min(before), fade_out


class Stub:
    """A generator whose mouth depends on both inputs: the reference half of the face, scaled by the mel's mean."""

    def __new__(cls):
        import torch

        class _Stub(torch.nn.Module):
            def forward(self, mel, face):  # (B, 1, 80, 16), (B, 6, 96, 96) -> (B, 3, 96, 96)
                return (face[:, 3:] * (0.6 + 0.1 * mel.mean(dim=(1, 2, 3)))[:, None, None, None]).clamp(0, 1)

        return _Stub()


@pytest.mark.parametrize("mode", ["hold", "model"])
def test_hold_mouth_is_one_mouth_per_pause(clip, mode):
    """Before encoding: with hold, the mouth of every frame inside a pause is the same pixels; with model it
    follows each frame's face (the head moves)."""
    from lipsync_cli.dub import DubOptions, dub

    frames: dict[int, np.ndarray] = {}
    opts = DubOptions(box=BOX, device="cpu", precision="fp32", preset="ultrafast", silence=mode, silence_fade=FADE)
    res = dub(clip["video"], clip["speech"], clip["dir"] / f"stub-{mode}.mp4", opts, model=Stub(),
              frame_sink=lambda i, f: frames.__setitem__(i, f.copy()))
    assert res.frames == len(frames) == 95
    steps = [diff(frames[i + 1], frames[i]) for core in cores(clip) for i in core[:-1]]
    if mode == "hold":
        assert max(steps) == 0.0, steps
        assert [p for p in res.pauses if p[0] > 0] == clip["pauses"]
    else:
        assert np.mean(steps) > 1.0, steps  # (the source repeats a frame now and then)
        assert res.pauses == []
