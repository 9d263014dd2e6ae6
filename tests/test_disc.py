"""Wav2Lip visual-quality discriminator: upstream key layout and numerics against ../shared/compat."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lipsync_cli.errors import CheckpointMismatch
from lipsync_cli.models.disc import Wav2LipDiscQual, load_discriminator


@pytest.fixture(scope="module")
def ref(compat_dir):
    return dict(np.load(compat_dir / "disc_qual_ref.npz"))


@pytest.fixture(scope="module")
def disc(fake_ckpt):
    return load_discriminator(fake_ckpt("disc_qual"))


def test_keys_and_shapes_match_upstream(compat_dir):
    expected = [(k, list(s)) for k, s in json.loads((compat_dir / "disc_qual_keys.json").read_text())]
    assert [(k, list(v.shape)) for k, v in Wav2LipDiscQual().state_dict().items()] == expected


def test_forward_and_perceptual_loss_match_reference(disc, ref):
    clip = torch.from_numpy(ref["clip"])  # (1, 3, 2, 96, 96)
    with torch.no_grad():
        out = disc(clip)
        loss = disc.perceptual_forward(clip)
    assert out.shape == (2, 1)
    np.testing.assert_allclose(out.numpy(), ref["out"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(float(loss), float(ref["bce_vs_ones"]), rtol=0, atol=1e-4)


def test_time_is_folded_time_major_on_the_lower_half(disc):
    g = torch.Generator().manual_seed(7)
    clip = torch.rand(2, 3, 2, 96, 96, generator=g)  # B=2, T=2
    altered = clip.clone()
    altered[:, :, :, :48] = 0.0  # the upper half is never looked at
    with torch.no_grad():
        out = disc(clip)  # (4, 1): rows t*B + b
        single = disc(altered[1:2, :, 0:1])  # clip 1, frame 0 -> row 0*2 + 1
    assert out.shape == (4, 1)
    torch.testing.assert_close(out[1], single[0], rtol=0, atol=1e-5)
    assert not torch.allclose(out[0], out[1])  # rows really differ, so the index check means something


def test_perceptual_forward_gives_gradients_to_the_fake(disc):
    fake = torch.rand(1, 3, 2, 96, 96, generator=torch.Generator().manual_seed(3), requires_grad=True)
    disc.perceptual_forward(fake).backward()
    assert fake.grad is not None and float(fake.grad[:, :, :, 48:].abs().sum()) > 0
    assert float(fake.grad[:, :, :, :48].abs().sum()) == 0.0


def test_load_discriminator_refuses_the_expert(fake_ckpt):
    with pytest.raises(CheckpointMismatch, match="discriminator"):
        load_discriminator(fake_ckpt("syncnet_color"))
