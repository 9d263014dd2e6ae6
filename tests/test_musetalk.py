"""MuseTalk 1.5: the released layout (keys, shapes) and parity with arrays computed by the upstream code
(tests/data/musetalk/README.md says how) on the deterministic fake weights of tests/musetalk_fakes.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from musetalk_fakes import DATA, UNET_CONFIG, load_keys, write_fake_release

from lipsync_cli.errors import CheckpointMismatch, InputNotFound, LipsyncError


def _extra():
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")


def _close(ours, ref, what: str) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, what
    diff = float(np.abs(ours - ref).max())
    assert diff <= 1e-4 * max(1.0, float(np.abs(ref).max())), f"{what}: max |ours - upstream| = {diff}"
    return diff


def _load(root):
    from lipsync_cli.models.musetalk import load_musetalk

    return load_musetalk(root / "musetalkV15/unet.pth", root / "musetalkV15/musetalk.json", root / "sd-vae",
                         root / "whisper", device="cpu", precision="fp32", seed=0)


def _parity(model, ref, n: int) -> dict[str, float]:
    """Each stage on upstream's own inputs, so each is compared alone; the VAE (the slow part on a CPU: ~5 s a
    face) on the first ``n`` faces. Returns max |ours - upstream| per array."""
    import torch

    from lipsync_cli.models.musetalk import positional_encoding

    diffs = {}
    feats = model.input_features(ref["audio"])
    t = ref["input_features"].shape[-1]
    diffs["input_features"] = _close(feats[0][:, :, :t].numpy(), ref["input_features"], "whisper log-mel")
    chunks = model.audio_chunks(ref["audio"], float(ref["fps"]))
    assert chunks.shape == (15, 50, 384)  # floor(0.6 s * 25 fps) windows of 10 x 5 layers
    diffs["whisper_chunks"] = _close(chunks, ref["whisper_chunks"], "whisper chunks")
    frames = list(ref["frames"])
    pe = chunks[frames] + positional_encoding(chunks.shape[1]).numpy()
    diffs["audio_pe"] = _close(pe, ref["audio_pe"], "positional-encoded audio")
    # face i's posterior noise is the (2i, 2i+1)-th draw of the seeded generator, as upstream's loop draws it
    sampled = model.encode_reference(ref["faces"][:n])
    diffs["latents_sampled"] = _close(sampled.numpy(), ref["latents_sampled"][:n], "VAE latents (sampled)")
    if n == len(ref["faces"]):
        mean = model.encode_reference(ref["faces"], sample=False)
        diffs["latents_mean"] = _close(mean.numpy(), ref["latents_mean"], "VAE latents (mean)")
    out = model.unet_latents(torch.from_numpy(ref["latents_sampled"]), ref["whisper_chunks"][frames])
    diffs["unet_out"] = _close(out.numpy(), ref["unet_out"], "UNet output")
    # the decoder end to end through the public calls: our latents and windows -> generate
    faces = model.generate(sampled, chunks[frames[:n]])
    assert faces.shape == (n, 256, 256, 3)
    grey = int(np.abs(faces.astype(int) - ref["decoded"][:n].astype(int)).max())
    assert faces.dtype == np.uint8 and grey <= 1, f"decoded faces differ by {grey} grey levels"
    diffs["decoded_grey_levels"] = grey
    return diffs


@pytest.mark.slow  # ~30 s on 2 busy cores, mostly importing diffusers and transformers
def test_unet_keys_and_shapes_are_the_released_files():
    """The UNet built from musetalk.json has the released unet.pth's keys and shapes (recorded from the diffusers
    0.30.2 class upstream loads it into, strictly); the VAE and whisper ones those of their loaders."""
    _extra()
    import torch
    from musetalk_fakes import WHISPER_CONFIG
    from transformers import WhisperConfig, WhisperModel

    from lipsync_cli.models.musetalk import build_unet

    got = [[k, list(v.shape)] for k, v in build_unet(UNET_CONFIG, device="meta").state_dict().items()]
    assert got == load_keys("unet")
    assert len(got) == 686 and sum(int(np.prod(s)) for _, s in got) == 849_947_844
    with torch.device("meta"):
        whisper = WhisperModel(WhisperConfig(**WHISPER_CONFIG))
    assert [[k, list(v.shape)] for k, v in whisper.state_dict().items()] == load_keys("whisper")


@pytest.fixture(scope="module")
def small_release(tmp_path_factory):
    _extra()
    return write_fake_release(tmp_path_factory.mktemp("musetalk_small"), small=True)


@pytest.mark.slow  # ~45 s on 2 busy cores: the released-size VAE encodes and decodes a 256 px face
def test_parity_with_upstream_small_unet(small_release):
    """Every stage equals upstream's output (fp32 tolerance; faces within 1 grey level), on the released VAE and
    whisper-tiny sizes and a small UNet of the released block types."""
    ref = np.load(DATA / "reference_small.npz")
    diffs = _parity(_load(small_release), ref, n=1)
    print(json.dumps(diffs))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LIPSYNC_TEST_MUSETALK_FULL"),
                    reason="released-size UNet: 3.4 GB of fake weights, ~8 GB of memory, minutes on 2 cores; "
                           "set LIPSYNC_TEST_MUSETALK_FULL=1")
def test_parity_with_upstream_released_size(tmp_path):
    """The same at the released UNet size (850 M parameters: 3.4 GB of fake weights, written for the test)."""
    _extra()
    t = time.time()
    root = write_fake_release(tmp_path, small=False)
    diffs = _parity(_load(root), np.load(DATA / "reference_full.npz"), n=2)
    print(json.dumps(diffs), f"{time.time() - t:.1f} s")


def test_window_count_and_padding_follow_upstream():
    """Pure window arithmetic: 25 fps = 2 encoder frames per video frame, 4 frames of zeros in front; frames past
    the audio get zeros instead of failing."""
    from lipsync_cli.models.musetalk import frame_count, whisper_windows

    hidden = np.arange(100 * 5 * 2, dtype=np.float32).reshape(100, 5, 2) + 1  # 2 s at 50 frames/s
    n = 16000 * 2
    assert frame_count(n, 25) == 50
    w = whisper_windows(hidden, n, 25)
    assert w.shape == (50, 50, 2)
    assert (w[0, :20] == 0).all() and (w[0, 20:25] == hidden[0]).all()  # frame 0: 4 zero frames, then frame 0
    assert (w[10].reshape(10, 5, 2)[4] == hidden[20]).all()  # frame i is centred (index 4 of 10) on 2i
    longer = whisper_windows(hidden, n, 25, n_frames=60)
    assert longer.shape == (60, 50, 2) and (longer[:50] == w).all() and (longer[59] == 0).all()


def test_missing_extra_is_one_line(monkeypatch, tmp_path):
    """Without diffusers/transformers: a one-line error naming the extra to install."""
    for mod in ("diffusers", "transformers"):
        monkeypatch.setitem(sys.modules, mod, None)
    from lipsync_cli.models.musetalk import load_musetalk

    with pytest.raises(LipsyncError) as err:
        load_musetalk(tmp_path / "unet.pth", tmp_path / "musetalk.json", tmp_path, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "lipsync-cli[musetalk]" in msg and "uv sync --extra musetalk" in msg


def test_importing_the_module_imports_no_extra():
    code = ("import sys, lipsync_cli.models.musetalk; "
            "print([m for m in ('diffusers', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_wrong_or_missing_files_are_one_line_errors(small_release, tmp_path):
    from lipsync_cli.models.musetalk import load_musetalk

    r = small_release
    with pytest.raises(InputNotFound, match="unet.pth"):
        load_musetalk(tmp_path / "unet.pth", r / "musetalkV15/musetalk.json", r / "sd-vae", r / "whisper")
    with pytest.raises(InputNotFound, match="sd-vae-ft-mse"):
        load_musetalk(r / "musetalkV15/unet.pth", r / "musetalkV15/musetalk.json", tmp_path, r / "whisper")
    full = tmp_path / "musetalk.json"
    full.write_text(json.dumps(UNET_CONFIG))
    with pytest.raises(CheckpointMismatch, match="of another shape") as err:  # small weights, released config
        load_musetalk(r / "musetalkV15/unet.pth", full, r / "sd-vae", r / "whisper")
    assert "\n" not in str(err.value)
    full.write_text(json.dumps({**UNET_CONFIG, "in_channels": 4}))
    with pytest.raises(CheckpointMismatch, match="not a MuseTalk UNet config"):
        load_musetalk(r / "musetalkV15/unet.pth", full, r / "sd-vae", r / "whisper")


def test_crop_geometry_follows_upstream():
    """Upstream's box: top as far above the nose point as the chin is below it, 10 px below the chin (v1.5),
    bbox_shift moving the centre point; the paste square 1.5x the longer side."""
    from lipsync_cli.models.musetalk import face_box, paste_box

    pts = np.zeros((68, 2))
    pts[:, 0] = np.linspace(100, 200, 68)
    pts[:, 1] = 150
    pts[8] = (150, 260)  # chin
    pts[29] = (150, 180)  # nose
    assert face_box(pts, 480) == (100, 100, 200, 270)  # 180 - (260 - 180) = 100; 260 + 10
    assert face_box(pts, 265) == (100, 100, 200, 265)  # clamped to the frame
    assert face_box(pts, 480, bbox_shift=-7, extra_margin=0) == (100, 86, 200, 260)  # centre 173: 173 - 87
    assert paste_box((100, 100, 200, 270)) == (150 - 127, 185 - 127, 150 + 127, 185 + 127)  # int(170 // 2 * 1.5)
    flat = pts.copy()
    flat[:, 0] = 120  # zero width: the detector's box instead
    assert face_box(flat, 480, fallback=(90, 80, 210, 250)) == (90, 80, 210, 260)
    assert face_box(flat, 480) is None
