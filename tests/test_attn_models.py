"""AttnWav2Lip and LPIPS-AttnWav2Lip: I/O contract, CBAM / FFC / AdaIN arithmetic, Wav2Lip initialisation,
gradients, bf16 autocast and checkpoint round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lipsync_cli.checkpoint import (
    atomic_save,
    detect_kind,
    load_file,
    load_generator,
    make_checkpoint,
    unwrap_state_dict,
)
from lipsync_cli.errors import CheckpointMismatch
from lipsync_cli.models import ARCHS, build_generator
from lipsync_cli.models.attn_wav2lip import AttnWav2Lip
from lipsync_cli.models.cbam import ChannelAttention, ResidualCBAM, SpatialAttention, cbam_hidden
from lipsync_cli.models.ffc import FFC, SpectralTransform, adain, channel_stats
from lipsync_cli.models.lpips_attn_wav2lip import LPIPSAttnWav2Lip, SemanticAlignment

ALL_ARCHS = ("wav2lip", "attn_wav2lip", "lpips_attn_wav2lip")


def _inputs(b: int = 2, t: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if t is None:
        face = torch.rand(b, 6, 96, 96, generator=g)
        face[:, :3, 48:] = 0
        return torch.rand(b, 1, 80, 16, generator=g) * 8 - 4, face
    face = torch.rand(b, 6, t, 96, 96, generator=g)
    face[:, :3, :, 48:] = 0
    return torch.rand(b, t, 1, 80, 16, generator=g) * 8 - 4, face


def _calibrated(arch: str) -> nn.Module:
    """A random-init generator, for LPIPS-AttnWav2Lip with BatchNorm running statistics taken from one batch.

    With the init statistics (mean 0, var 1) eval-mode BN is the identity, and through LPIPS-AttnWav2Lip's 26
    residual CBAMs activations grow until the sigmoid saturates, making numeric comparisons meaningless.
    (Not for the Wav2Lip-shaped nets: their 1x1 layers would get the variance of 2 samples.)"""
    m = build_generator(arch)
    if arch != "lpips_attn_wav2lip":
        return m.eval()
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = 1.0  # running stats := this batch's stats
    m.train()
    with torch.no_grad():
        m(*_inputs(b=2, seed=99))
    return m.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {a: _calibrated(a) for a in ALL_ARCHS}


@pytest.fixture(scope="module")
def runs(models) -> dict[str, dict]:
    """One clip (B=1, T=2) through each arch in fp32 with attention recorded, and frame 1 alone (per-frame
    form); computed once and shared by the tests below (these nets cost ~1 s a frame on a busy 2-core CPU)."""
    mel, face = _inputs(b=1, t=2)
    res = {}
    for arch, m in models.items():
        m.record_attention = True
        with torch.no_grad():
            seq = m(mel, face)  # (1, 3, 2, 96, 96)
        m.record_attention = False
        maps = dict(getattr(m, "attention_maps", {}))
        with torch.no_grad():
            frame1 = m(mel[:, 1], face[:, :, 1])  # (1, 3, 96, 96)
        res[arch] = {"mel": mel, "face": face, "seq": seq, "frame1": frame1, "maps": maps}
    return res


def test_registry_names_and_config(models):
    assert set(ARCHS) == set(ALL_ARCHS)
    for a, m in models.items():
        assert m.arch == a
        assert type(build_generator(a, m.config)) is type(m)  # config rebuilds the same class
    assert models["attn_wav2lip"].config == {"reduction": 16, "spatial_kernel": 7, "min_hidden": 4}
    assert models["lpips_attn_wav2lip"].config["n_align"] == 9


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_shapes_range_and_time_folding(runs, arch):
    seq, last = runs[arch]["seq"], runs[arch]["frame1"]
    assert seq.shape == (1, 3, 2, 96, 96) and last.shape == (1, 3, 96, 96)
    assert seq.dtype == torch.float32
    assert float(seq.min()) >= 0.0 and float(seq.max()) <= 1.0
    assert float(seq.std()) > 1e-3  # not a constant image
    torch.testing.assert_close(seq[:, :, 1], last, atol=1e-4, rtol=1e-3)  # batch-size dependent conv kernels
    assert not torch.allclose(seq[:, :, 0], seq[:, :, 1])  # the two frames are really different inputs


def _grad_check(arch: str, config: dict | None = None) -> None:
    torch.manual_seed(1)
    m = build_generator(arch, config).train()
    mel, face = _inputs(b=2, seed=1)
    out = m(mel, face)
    assert out.shape == (2, 3, 96, 96)
    (out - face[:, 3:]).abs().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not bool(torch.isfinite(p.grad).all())]
    assert missing == []
    # a channel-attention bottleneck of 4 ReLU units can be entirely inactive at init for one input, so its
    # first layer may get an all-zero gradient legitimately; everything else must receive a non-zero gradient
    zero = [n for n, p in m.named_parameters() if not torch.any(p.grad != 0) and ".channel.mlp." not in n]
    assert zero == []
    assert all(torch.any(p.grad != 0) for n, p in m.named_parameters() if n.endswith(".channel.mlp.2.bias"))


def test_gradients_reach_every_parameter_lpips():
    _grad_check("lpips_attn_wav2lip", {"n_align": 2})


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["wav2lip", "attn_wav2lip"])
def test_gradients_reach_every_parameter(arch):
    _grad_check(arch)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_bf16_autocast_on_cpu(models, runs, arch):
    r = runs[arch]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = models[arch](r["mel"][:, 1], r["face"][:, :, 1])
    assert out.shape == (1, 3, 96, 96)
    assert bool(torch.isfinite(out.float()).all())
    err = (out.float() - r["frame1"]).abs()
    assert float(err.mean()) < 0.01, float(err.mean())


def test_cbam_hidden_width_floor():
    assert cbam_hidden(512) == 32 and cbam_hidden(64) == 4 and cbam_hidden(16) == 4
    assert cbam_hidden(16, min_hidden=1) == 1 and cbam_hidden(2) == 2


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_cbam_equations_on_hand_computable_input():
    # two channels, 2x2 pixels; the MLP is identity -> ReLU -> identity, the SAM kernel reads only its centre
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.5, -1.0], [0.0, 0.5]]]])  # (1, 2, 2, 2)
    cbam = ResidualCBAM(2, reduction=16, spatial_kernel=3)
    with torch.no_grad():
        for conv in (cbam.channel.mlp[0], cbam.channel.mlp[2]):
            conv.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
            conv.bias.zero_()
        cbam.spatial.conv.weight.zero_()
        cbam.spatial.conv.weight[0, 0, 1, 1] = 0.5  # weight on the channel-mean map
        cbam.spatial.conv.weight[0, 1, 1, 1] = -0.25  # weight on the channel-max map
        out, sam = cbam.forward_with_map(x)

    # CAM: sigmoid(relu(avg) + relu(max)) per channel
    mc = [_sig(3.0 + 6.0), _sig(0.0 + 0.5)]  # ch0 avg 3, max 6; ch1 avg 0, max 0.5
    f1 = [[[x[0, c, i, j].item() * (1 + mc[c]) for j in range(2)] for i in range(2)] for c in range(2)]
    # SAM on F': sigmoid(0.5 * mean_c - 0.25 * max_c) per pixel
    ms = [[_sig(0.5 * (f1[0][i][j] + f1[1][i][j]) / 2 - 0.25 * max(f1[0][i][j], f1[1][i][j]))
           for j in range(2)] for i in range(2)]
    want = torch.tensor([[[[f1[c][i][j] * (1 + ms[i][j]) for j in range(2)] for i in range(2)]
                          for c in range(2)]])
    torch.testing.assert_close(sam, torch.tensor(ms).reshape(1, 1, 2, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def test_channel_and_spatial_attention_shapes_and_shared_mlp():
    ca = ChannelAttention(64)
    assert ca.mlp[0].out_channels == 4  # 64 // 16
    x = torch.randn(3, 64, 5, 7)
    with torch.no_grad():
        w = ca(x)
    assert w.shape == (3, 64, 1, 1) and float(w.min()) > 0 and float(w.max()) < 1
    with torch.no_grad():  # one MLP shared by both descriptors
        manual = torch.sigmoid(ca.mlp(x.mean((2, 3), keepdim=True)) + ca.mlp(x.amax((2, 3), keepdim=True)))
    torch.testing.assert_close(w, manual)
    assert SpatialAttention(7)(x).shape == (3, 1, 5, 7)
    with pytest.raises(ValueError):
        SpatialAttention(4)


def test_adain_output_statistics_equal_audio_scale_and_shift():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 6, 6, generator=g) * 3 + 1
    scale = torch.rand(2, 8, generator=g) * 2 + 0.1
    shift = torch.randn(2, 8, generator=g)
    y = adain(x, scale, shift, eps=1e-8)
    torch.testing.assert_close(y.mean(dim=(2, 3)), shift, atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(2, 3), unbiased=False), scale, atol=1e-4, rtol=1e-4)

    # in the model, "stats" mode takes scale/shift = per-channel std/mean of the audio map (eq. 2)
    mod = SemanticAlignment(8, ffc_ratio=0.75, ffc_lfu=False, adain_source="stats", eps=1e-8)
    audio = torch.rand(2, 8, 6, 6, generator=g) * 4
    s, b = mod.audio_affine(audio)
    torch.testing.assert_close(s, audio.std(dim=(2, 3), unbiased=False), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, audio.mean(dim=(2, 3)))
    mod.eval()
    with torch.no_grad():
        z = mod(x, audio) - x  # the residual branch = AdaIN(FFC(x))
    torch.testing.assert_close(z.mean(dim=(2, 3)), b, atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(dim=(2, 3), unbiased=False), s, atol=1e-3, rtol=1e-3)
    std, mu = channel_stats(audio, eps=0.0)
    torch.testing.assert_close(mu, audio.mean(dim=(2, 3)))
    torch.testing.assert_close(std, audio.std(dim=(2, 3), unbiased=False))

    lin = SemanticAlignment(8, 0.75, False, "linear")
    s, b = lin.audio_affine(audio)  # zero-initialised: plain instance norm at the start
    assert torch.equal(s, torch.ones(2, 8)) and torch.equal(b, torch.zeros(2, 8))


def _randomise_bn(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


@pytest.mark.parametrize("lfu", [False, True])
def test_ffc_global_branch_matches_its_definition(lfu):
    torch.manual_seed(4)
    st = SpectralTransform(8, 16, lfu=lfu).eval()
    _randomise_bn(st, 5)
    x = torch.randn(2, 8, 6, 6)

    def fourier_unit(v: torch.Tensor, fu) -> torch.Tensor:  # by hand with torch.fft
        spec = torch.fft.rfft2(v, norm="ortho")  # (B, C, 6, 4)
        c = v.shape[1]
        w = fu.conv.weight[:, :, 0, 0]  # (2C, 2C)
        stacked = torch.cat([spec.real, spec.imag], dim=1)
        mixed = torch.relu(_bn(torch.einsum("oc,bchw->bohw", w, stacked), fu.bn))
        return torch.fft.irfft2(torch.complex(mixed[:, :c], mixed[:, c:]), s=v.shape[-2:], norm="ortho")

    with torch.no_grad():
        h = torch.relu(_bn(torch.einsum("oc,bchw->bohw", st.conv1[0].weight[:, :, 0, 0], x), st.conv1[1]))
        total = h + fourier_unit(h, st.fu)
        if lfu:
            q = h[:, :2]  # first quarter of the 8 channels, cut into 2x2 tiles of 3x3
            tiles = torch.cat([q[:, :, :3, :3], q[:, :, 3:, :3], q[:, :, :3, 3:], q[:, :, 3:, 3:]], dim=1)
            total = total + fourier_unit(tiles, st.lfu).repeat(1, 1, 2, 2)
        want = torch.einsum("oc,bchw->bohw", st.conv2.weight[:, :, 0, 0], total)
        got = st(x)
    assert got.shape == (2, 16, 6, 6)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_ffc_splits_local_and_global_channels():
    torch.manual_seed(6)
    ffc = FFC(8, 8, kernel_size=3, ratio=0.75).eval()
    assert (ffc.cin_l, ffc.cin_g) == (2, 6)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        y_l = torch.relu(ffc.bn_l(ffc.conv_l2l(x[:, :2]) + ffc.conv_g2l(x[:, 2:])))
        y_g = torch.relu(ffc.bn_g(ffc.conv_l2g(x[:, :2]) + ffc.conv_g2g(x[:, 2:])))
        torch.testing.assert_close(ffc(x), torch.cat([y_l, y_g], dim=1))


def test_fft_runs_in_float32_under_autocast():
    torch.manual_seed(7)
    st = SpectralTransform(8, 8).eval()
    x = torch.randn(1, 8, 6, 6)
    seen = []
    hook = st.fu.conv.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].dtype))
    with torch.no_grad():
        ref = st(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = st(x)
    hook.remove()
    assert seen == [torch.float32, torch.float32]  # the frequency-domain conv never sees bf16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)


def test_wav2lip_checkpoint_initialises_attn_wav2lip(fake_ckpt):
    path = fake_ckpt("wav2lip")
    sd = unwrap_state_dict(load_file(path))
    for model in (AttnWav2Lip.from_wav2lip_state_dict(sd), load_generator(path, arch="attn_wav2lip", untrained=True)):
        assert isinstance(model, AttnWav2Lip)
        own = model.state_dict()
        assert set(sd) < set(own)
        for k, v in sd.items():  # every shared tensor copied
            assert torch.equal(own[k], v), k
        fresh = [k for k in own if k not in sd]
        assert fresh and all(".cbam." in k for k in fresh)
    with pytest.raises(CheckpointMismatch):
        AttnWav2Lip.from_wav2lip_state_dict({k: v for k, v in sd.items() if "output_block" not in k})


@pytest.mark.parametrize("arch", ["attn_wav2lip", "lpips_attn_wav2lip"])
def test_checkpoint_round_trip_without_arch(models, runs, arch, tmp_path):
    m = models[arch]
    path = tmp_path / f"{arch}.pth"
    atomic_save(make_checkpoint(m, step=3), path)
    back = load_generator(path)
    assert type(back) is type(m) and back.arch == arch and back.config == m.config and not back.training
    own = m.state_dict()
    for k, v in back.state_dict().items():
        assert torch.equal(v, own[k]), k
    r = runs[arch]
    with torch.no_grad():
        assert torch.equal(back(r["mel"][:, 1], r["face"][:, :, 1]), r["frame1"])


def test_attn_state_dict_detected_as_attn_wav2lip(models):
    assert detect_kind(models["attn_wav2lip"].state_dict()) == "attn_wav2lip"
    assert detect_kind({"module." + k: v for k, v in models["wav2lip"].state_dict().items()}) == "wav2lip"


@pytest.mark.parametrize("arch", ["attn_wav2lip", "lpips_attn_wav2lip"])
def test_record_attention_maps(models, runs, arch):
    maps = runs[arch]["maps"]
    assert list(maps) == models[arch].attention_names()
    sizes = {96, 48, 24, 12, 6} | ({3, 1} if arch == "attn_wav2lip" else set())
    assert {v.shape[-1] for v in maps.values()} == sizes
    for v in maps.values():
        assert v.shape[:2] == (2, 1) and float(v.min()) >= 0 and float(v.max()) <= 1  # 2 = T*B folded
    assert maps["enc0" if arch == "attn_wav2lip" else "enc0.0"].shape == (2, 1, 96, 96)
    assert models[arch].record_attention is False


def test_lpips_options_change_the_network():
    base = LPIPSAttnWav2Lip(n_align=1)
    stage = LPIPSAttnWav2Lip(n_align=1, cbam_placement="stage")
    assert len(stage.attention_names()) == 9 and len(base.attention_names()) == 26
    lfu = LPIPSAttnWav2Lip(n_align=1, ffc_lfu=True, adain_source="linear", spatial_kernel=3)
    keys = set(lfu.state_dict())
    assert any(".lfu." in k for k in keys) and any(".style." in k for k in keys)
    assert lfu.face_encoder_stages[0].attn[0]["cbam"].spatial.conv.kernel_size == (3, 3)
    with pytest.raises(ValueError):
        LPIPSAttnWav2Lip(adain_source="nope")
    # the bottleneck really is 6x6x256 for faces and audio
    mel, face = _inputs(b=1)
    with torch.no_grad():
        h = face
        for st in base.face_encoder_stages:
            h = st(h)
        assert h.shape == (1, 256, 6, 6) and base.encode_audio(mel).shape == (1, 256, 6, 6)
    assert np.prod(h.shape[1:]) == 6 * 6 * 256


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_conv_bn_folding_keeps_outputs(models, runs, arch):
    # dub folds BatchNorm into the convolutions before inference; every arch must survive it
    from lipsync_cli.models.fuse import fuse_conv_bn

    fused = fuse_conv_bn(models[arch])
    r = runs[arch]
    with torch.no_grad():
        out = fused(r["mel"][:, 1], r["face"][:, :, 1])
    torch.testing.assert_close(out, r["frame1"], atol=1e-4, rtol=1e-3)


# ---- `lipsync models` and `lipsync inspect attention` ----

class _StubAttention(nn.Module):
    """Records one known map: weight rising left to right (0 .. 1) over a 4x4 grid."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.record_attention = False
        self.attention_maps: dict[str, torch.Tensor] = {}

    @staticmethod
    def attention_names() -> list[str]:
        return ["enc0", "dec0"]

    def forward(self, mel, face):
        ramp = torch.linspace(0, 1, 4).expand(face.shape[0], 1, 4, 4)
        if self.record_attention:
            self.attention_maps = {"enc0": ramp.clone(), "dec0": torch.full_like(ramp, 0.5)}
        return face[:, :3]


def test_render_attention_grid_layout_and_colours():
    from lipsync_cli.errors import BadOption
    from lipsync_cli.inspect_attention import CELL, HEADER, render_attention_grid

    faces = np.zeros((2, 6, 96, 96), np.float32)
    faces[1, 3:] = 1.0  # second face white
    mels = np.zeros((2, 1, 80, 16), np.float32)
    stub = _StubAttention()
    img = render_attention_grid(stub, faces, mels, ["enc0", "dec0"])
    assert img.shape == (HEADER + 2 * CELL, 3 * CELL, 3) and img.dtype == np.uint8
    assert stub.record_attention is False  # restored
    row1 = HEADER + CELL // 2
    assert img[row1, CELL // 2].tolist() == [0, 0, 0]  # input column: the black reference face
    left, right = img[row1, CELL + 2].astype(int), img[row1, 2 * CELL - 3].astype(int)
    assert left[0] > left[2] and right[2] > right[0]  # BGR: low weight blue (left), high red (right)
    assert img[HEADER + CELL + CELL // 2, CELL // 2].tolist() == [255, 255, 255]
    with pytest.raises(BadOption, match="enc0, dec0"):
        render_attention_grid(stub, faces, mels, ["enc9"])
    with pytest.raises(BadOption, match="no attention"):
        render_attention_grid(nn.Conv2d(1, 1, 1), faces, mels)


def test_pick_frames_spreads_evenly():
    from lipsync_cli.inspect_attention import pick_frames

    assert pick_frames(25, 4) == [0, 8, 16, 24]
    assert pick_frames(3, 10) == [0, 1, 2]
    assert pick_frames(1, 4) == [0]


def test_models_command_lists_every_arch():
    from typer.testing import CliRunner

    from lipsync_cli.cli import app

    res = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for arch in ALL_ARCHS:
        assert arch in res.output
    assert "36.30 M" in res.output  # Wav2Lip's 36,298,035 parameters


def test_inspect_attention_cli_writes_grid(fake_ckpt, tmp_path):
    import cv2
    from synth import make_video
    from typer.testing import CliRunner

    from lipsync_cli.cli import app
    from lipsync_cli.errors import BadOption
    from lipsync_cli.inspect_attention import CELL, HEADER

    ckpt = tmp_path / "attn.pth"
    atomic_save(make_checkpoint(load_generator(fake_ckpt("wav2lip"), arch="attn_wav2lip", untrained=True)), ckpt)
    video = make_video(tmp_path / "clip.mp4", seconds=1.0, size=(160, 120))
    out = tmp_path / "maps.png"
    args = ["inspect", "attention", str(video), str(video), "-o", str(out), "-c", str(ckpt),
            "--box", "40", "10", "130", "110", "--frames", "2", "--blocks", "enc0,dec6", "--blocks", "enc3"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    img = cv2.imread(str(out))
    assert img.shape == (HEADER + 2 * CELL, 4 * CELL, 3)
    face = img[HEADER:HEADER + CELL, :CELL].astype(int)
    overlay = img[HEADER:HEADER + CELL, CELL:2 * CELL].astype(int)
    assert np.abs(face - overlay).mean() > 5  # a heat map really is drawn over the face

    res = CliRunner().invoke(app, args[:-4] + ["--blocks", "nope"])
    assert isinstance(res.exception, BadOption) and "enc0" in str(res.exception)


@pytest.mark.parametrize("lead", [0, 2])
def test_inspect_attention_feeds_each_frame_the_window_of_the_generators_lead(fake_ckpt, tmp_path, monkeypatch,
                                                                               lead):
    """A checkpoint trained with a lead of 2 frames sees, for frame f, the mel window of frame f - 2 (as dub
    feeds it), not the window of frame f."""
    from synth import make_audio, make_video
    from typer.testing import CliRunner

    from lipsync_cli import inspect_attention
    from lipsync_cli.audio import load_audio, melspectrogram
    from lipsync_cli.cli import app

    ckpt = tmp_path / "attn.pth"
    model = load_generator(fake_ckpt("wav2lip"), arch="attn_wav2lip", untrained=True)
    atomic_save(make_checkpoint(model, mel_lead=lead), ckpt)
    video = make_video(tmp_path / "clip.mp4", seconds=1.0, size=(160, 120), audio=False)
    speech = make_audio(tmp_path / "speech.wav", seconds=1.0, sample_rate=16000, channels=1)
    seen = {}

    def capture(model, faces, mels, blocks=None, **kw):
        seen["mels"] = np.asarray(mels)
        return np.zeros((8, 8, 3), np.uint8)

    monkeypatch.setattr(inspect_attention, "render_attention_grid", capture)
    monkeypatch.setattr(inspect_attention, "pick_frames", lambda n_available, n: [0, 5, 13, 24][:n])
    res = CliRunner().invoke(app, ["inspect", "attention", str(video), str(speech), "-o", str(tmp_path / "m.png"),
                                   "-c", str(ckpt), "--box", "40", "10", "130", "110", "--frames", "4"])
    assert res.exit_code == 0, res.output
    mel = melspectrogram(load_audio(speech))  # (80, T)
    assert seen["mels"].shape == (4, 1, 80, 16)
    for k, f in enumerate([0, 5, 13, 24]):
        s = min(max(0, int((f - lead) * 80 / 25)), mel.shape[1] - 16)  # frame f -> the window of f - lead,
        # clamped to the audio as dub clamps it (frame 0 gets the first window, frame 24 the last)
        np.testing.assert_array_equal(seen["mels"][k, 0], mel[:, s:s + 16], err_msg=f"frame {f}")
