"""GFPGAN v1.4 (lipsync_cli/models/gfpgan.py): the released file's layout, parity with the upstream reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lipsync_cli.models.gfpgan import GFPGANv1Clean, ModulatedConv2d, load_gfpgan

PARAMS_WITH_NOISE = 87143276  # manifest.json: GFPGANv1.4.pth's tensors, the 15 noise buffers included


def test_state_dict_is_the_released_files_layout(compat_dir):
    """Same keys, order and shapes as GFPGANv1.4.pth (the compat key list), 87.1 M numbers."""
    with torch.device("meta"):
        net = GFPGANv1Clean()
    ours = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    assert ours == json.loads((compat_dir / "gfpgan_v14_keys.json").read_text())
    assert sum(v.numel() for v in net.state_dict().values()) == PARAMS_WITH_NOISE


def test_modulated_conv_equals_the_per_sample_weight_form():
    """We scale the input by the style; StyleGAN2's reference builds one modulated weight per sample and runs a
    grouped convolution. Same numbers."""
    torch.manual_seed(0)
    for demod, up in ((True, False), (True, True), (False, False)):
        conv = ModulatedConv2d(6, 5, 3 if demod else 1, 8, demodulate=demod, upsample=up)
        x, style = torch.randn(3, 6, 7, 7), torch.randn(3, 8)
        b = x.shape[0]
        s = conv.modulation(style).view(b, 1, 6, 1, 1)
        w = conv.weight * s  # (b, 5, 6, k, k)
        if demod:
            w = w * torch.rsqrt(w.pow(2).sum([2, 3, 4]) + 1e-8).view(b, 5, 1, 1, 1)
        xr = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False) if up else x
        k = conv.kernel
        ref = torch.nn.functional.conv2d(xr.reshape(1, -1, *xr.shape[2:]), w.view(b * 5, 6, k, k),
                                         padding=k // 2, groups=b).view(b, 5, *xr.shape[2:])
        assert torch.allclose(conv(x, style), ref, atol=1e-5, rtol=1e-5)


def _tiny(noise_strength: float = 0.5) -> GFPGANv1Clean:
    torch.manual_seed(0)
    net = GFPGANv1Clean(out_size=32, style_dim=16, num_mlp=2, narrow=1 / 16).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("style_conv1.weight", ".weight")) and p.shape == (1,):
                p.fill_(noise_strength)  # noise strengths (zero at init)
    return net


def test_fixed_noise_is_deterministic_random_noise_is_not():
    net = _tiny()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        a, b = net(x), net(x)
        r1, r2 = net(x, noise="random"), net(x, noise="random")
    assert torch.equal(a, b)
    assert (r1 - r2).abs().max() > 1e-3  # GFPGANer's behaviour: fresh noise every call
    # the first sample does not depend on the second one (batched faces are independent)
    with torch.inference_mode():
        assert torch.allclose(net(x[:1]), a[:1], atol=1e-5)


def test_loader_refuses_other_files(tmp_path):
    from lipsync_cli.errors import CheckpointMismatch

    torch.save({"params_ema": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointMismatch, match="this needs GFPGAN v1.4"):
        load_gfpgan(tmp_path / "other.pth")


@pytest.mark.slow  # one 512x512 pass of the 87 M-parameter network: ~20 s on a shared 2-core CPU
def test_parity_with_the_upstream_reference(compat_dir, fake_ckpt):
    """The released container ({'params_ema': ...}) loads unchanged (weights_only=True), and the forward pass with
    the stored noise reproduces GFPGANv1Clean's: out within 1e-4 * max(1, max|ref|), restored_bgr within 1 level."""
    from lipsync_cli.checkpoint import detect_kind, load_file
    from lipsync_cli.enhance.restorers import from_output, to_input

    path = fake_ckpt("gfpgan_v14")
    obj = load_file(path)
    assert set(obj) == {"params_ema"} and detect_kind(obj) == "gfpgan_v14"
    ref = np.load(compat_dir / "gfpgan_v14_ref.npz")
    x = to_input(ref["face_bgr"][None])
    np.testing.assert_allclose(x, ref["net_input"], atol=1e-6)
    net = load_gfpgan(path)
    with torch.inference_mode():
        out = net(torch.from_numpy(x)).numpy()
    err = float(np.abs(out - ref["out"]).max())
    assert err <= 1e-4 * max(1.0, float(np.abs(ref["out"]).max())), err
    restored = from_output(out)[0]
    assert np.abs(restored.astype(int) - ref["restored_bgr"].astype(int)).max() <= 1
