"""Every architecture through the real `lipsync dub` CLI on a real clip, from a freshly initialised checkpoint."""

from __future__ import annotations

import pytest
import torch
from checks import assert_mouth_redrawn, run_cli
from conftest import media
from synth import run_ffmpeg

from lipsync_cli.checkpoint import atomic_save, make_checkpoint
from lipsync_cli.media.probe import probe
from lipsync_cli.models import build_generator


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["wav2lip", "attn_wav2lip", "lpips_attn_wav2lip"])
def test_each_arch_dubs_a_real_clip(arch, tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / f"{arch}.pt"
    atomic_save(make_checkpoint(build_generator(arch)), ckpt)
    audio = tmp_path / "speech.wav"
    run_ffmpeg(["-i", str(media("retalking_2.wav")), "-t", "1", str(audio)])
    clip = media("sadtalker_WDA_KatieHill_000.mp4")  # 512x512 MPEG-4, 25 fps, one face in the middle
    out = tmp_path / "out.mp4"
    r = run_cli("dub", str(clip), str(audio), "-o", str(out), "--checkpoint", str(ckpt),
                "--box", "128", "96", "384", "416", "--batch-size", "8")  # no --arch: read from the checkpoint
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert info.n_frames == 25 and info.codec == "h264" and info.has_audio
    assert_mouth_redrawn(clip, out, (128, 96, 384, 416), n=25)
