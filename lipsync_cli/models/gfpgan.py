"""GFPGAN v1.4 (GFPGANv1Clean): the face restorer that ``GFPGANv1.4.pth`` holds, with its parameter names.

A residual U-Net encodes the aligned 512x512 face into 16 style vectors (one per decoder layer, ``different_w``)
and, at each decoder resolution from 8 to 512, a pair of spatial feature transforms (scale, shift); a StyleGAN2
decoder draws the face from a learnt 4x4 constant, its modulated convolutions driven by the style vectors, the
SFT applied to half of the channels after the first convolution of every resolution (``sft_half``). Defaults are
the configuration TencentARC's ``GFPGANer`` builds for GFPGANv1.4.pth (``arch='clean'``): out_size 512,
channel_multiplier 2, num_mlp 8, input_is_latent, different_w, sft_half; 87.1 M parameters.

Input and output: (B, 3, S, S) RGB in [-1, 1] (``(x / 255 - 0.5) / 0.5``), S = ``out_size``.

Noise: each style convolution adds per-pixel noise times a learnt strength. ``noise="fixed"`` (our default)
uses the buffers stored in the checkpoint (``stylegan_decoder.noises.noise0..14``), so the same face gives the
same output on every frame; ``noise="random"`` draws fresh noise per call, which is what ``GFPGANer`` does
(``randomize_noise=True``) and one source of frame-to-frame flicker on video.

The modulated convolutions scale the input by the style instead of building one weight per sample (the StyleGAN2
paper's non-fused form): the same result to float rounding, one shared convolution per batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lipsync_cli.checkpoint_kinds import KindSignature, register_kind
from lipsync_cli.constants import ENHANCE_NOISE as NOISE_MODES

KIND = "gfpgan_v14"
LRELU_SLOPE = 0.2

register_kind(KindSignature(
    KIND, "GFPGAN v1.4 face restorer (GFPGANv1.4.pth)",
    requires=("conv_body_first.", "conv_body_down.", "condition_scale.", "stylegan_decoder.style_convs."),
))


def _channels(multiplier: float, narrow: float) -> dict[int, int]:
    """StyleGAN2's channels per resolution (4 .. 1024), ``narrow`` times."""
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * multiplier, 128: 128 * multiplier,
            256: 64 * multiplier, 512: 32 * multiplier, 1024: 16 * multiplier}
    return {r: int(c * narrow) for r, c in base.items()}


def _randn(*shape: int, std: float = 1.0) -> torch.Tensor:
    """Normal init (StyleGAN2's); skipped on the meta device, where ``normal_`` costs seconds of imports."""
    t = torch.empty(*shape)
    return t if t.is_meta else t.normal_(0.0, std)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution (no bias): weight (1, out, in, k, k) scaled per input channel by
    ``modulation(style)``, optionally demodulated, optionally after a bilinear 2x upsampling of the input."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, eps: float = 1e-8):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel = in_ch, out_ch, kernel
        self.demodulate, self.upsample, self.eps = demodulate, upsample, eps
        self.modulation = nn.Linear(style_dim, in_ch)
        self.weight = nn.Parameter(_randn(1, out_ch, in_ch, kernel, kernel, std=1 / math.sqrt(in_ch * kernel ** 2)))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.modulation(style)  # (B, in)
        w = self.weight[0]  # (out, in, k, k)
        if self.upsample:
            x = _up2(x)
        out = F.conv2d(x * s[:, :, None, None], w, padding=self.kernel // 2)  # (B, out, H, W)
        if self.demodulate:
            # sum over (in, k, k) of (w * s)^2 = (s^2) @ (sum_k w^2)^T
            d = torch.rsqrt((s * s) @ w.pow(2).sum((2, 3)).t() + self.eps)  # (B, out)
            out = out * d[:, :, None, None]
        return out


class StyleConv(nn.Module):
    """Modulated conv, times sqrt(2), plus noise x learnt strength (``weight``), plus bias, leaky ReLU."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        out = self.modulated_conv(x, style) * math.sqrt(2.0)
        if noise is None:  # fresh noise, one map per sample
            noise = torch.randn(out.shape[0], 1, *out.shape[2:], device=out.device, dtype=out.dtype)
        out = out + self.weight * noise + self.bias
        return F.leaky_relu(out, LRELU_SLOPE)


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) plus bias, added to the upsampled RGB of the level below."""

    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            out = out + (_up2(skip) if self.upsample else skip)
        return out


class NormStyleCode(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int):
        super().__init__()
        self.weight = nn.Parameter(_randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.weight.expand(batch, -1, -1, -1)


class StyleGAN2DecoderSFT(nn.Module):
    """The StyleGAN2 generator with spatial feature transforms on half the channels of each resolution."""

    def __init__(self, out_size: int = 512, style_dim: int = 512, num_mlp: int = 8, channel_multiplier: float = 2,
                 narrow: float = 1, sft_half: bool = True):
        super().__init__()
        self.sft_half = sft_half
        # the style MLP is kept for the checkpoint's keys; GFPGAN feeds latents directly (input_is_latent)
        layers: list[nn.Module] = [NormStyleCode()]
        for _ in range(num_mlp):
            layers += [nn.Linear(style_dim, style_dim), nn.LeakyReLU(LRELU_SLOPE)]
        self.style_mlp = nn.Sequential(*layers)
        ch = _channels(channel_multiplier, narrow)
        self.log_size = int(math.log2(out_size))
        self.num_layers = (self.log_size - 2) * 2 + 1  # style convs: 1 at 4x4, then 2 per resolution
        self.num_latent = self.log_size * 2 - 2
        self.constant_input = ConstantInput(ch[4], 4)
        self.style_conv1 = StyleConv(ch[4], ch[4], style_dim)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)  # 4, 8, 8, 16, 16, ...
            self.noises.register_buffer(f"noise{i}", _randn(1, 1, res, res))
        in_ch = ch[4]
        for lv in range(3, self.log_size + 1):
            out_ch = ch[2 ** lv]
            self.style_convs.append(StyleConv(in_ch, out_ch, style_dim, upsample=True))
            self.style_convs.append(StyleConv(out_ch, out_ch, style_dim))
            self.to_rgbs.append(ToRGB(out_ch, style_dim))
            in_ch = out_ch

    def forward(self, latent: torch.Tensor, conditions: list[tuple[torch.Tensor, torch.Tensor]],
                noise: str = "fixed") -> torch.Tensor:
        """latent (B, num_latent, style_dim); conditions: (scale, shift) per resolution 8, 16, ...;
        returns (B, 3, out_size, out_size)."""
        if noise == "fixed":
            noises = [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]
        else:
            noises = [None] * self.num_layers
        out = self.constant_input(latent.shape[0])  # (B, 512, 4, 4)
        out = self.style_conv1(out, latent[:, 0], noises[0])
        skip = self.to_rgb1(out, latent[:, 1])
        for k, to_rgb in enumerate(self.to_rgbs):
            i = 2 * k + 1
            out = self.style_convs[2 * k](out, latent[:, i], noises[i])
            if k < len(conditions):
                scale, shift = conditions[k]
                if self.sft_half:
                    same, sft = out.split(out.shape[1] // 2, dim=1)
                    out = torch.cat([same, sft * scale + shift], dim=1)
                else:
                    out = out * scale + shift
            out = self.style_convs[2 * k + 1](out, latent[:, i + 1], noises[i + 1])
            skip = to_rgb(out, latent[:, i + 2], skip)
        return skip


class ResBlock(nn.Module):
    """conv3x3, leaky ReLU, bilinear resize (x0.5 or x2), conv3x3, leaky ReLU; plus a resized 1x1 skip."""

    def __init__(self, in_ch: int, out_ch: int, scale: float):
        super().__init__()
        self.scale = scale
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def resize(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, scale_factor=self.scale, mode="bilinear", align_corners=False)

        out = F.leaky_relu(self.conv1(x), LRELU_SLOPE)
        out = F.leaky_relu(self.conv2(resize(out)), LRELU_SLOPE)
        return out + self.skip(resize(x))


class GFPGANv1Clean(nn.Module):
    """GFPGAN v1 "clean" (no compiled ops): U-Net encoder + StyleGAN2 decoder with SFT. See the module doc."""

    def __init__(self, out_size: int = 512, style_dim: int = 512, channel_multiplier: float = 2, num_mlp: int = 8,
                 narrow: float = 1, sft_half: bool = True, noise: str = "fixed"):
        super().__init__()
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
        self.out_size = out_size
        self.style_dim = style_dim
        self.noise = noise
        self.config = dict(out_size=out_size, style_dim=style_dim, channel_multiplier=channel_multiplier,
                           num_mlp=num_mlp, narrow=narrow, sft_half=sft_half)
        log_size = int(math.log2(out_size))
        if 2 ** log_size != out_size or log_size < 3:
            raise ValueError(f"out_size must be a power of two >= 8, got {out_size}")
        ch = _channels(channel_multiplier, narrow * 0.5)  # the U-Net has half the decoder's channels
        self.conv_body_first = nn.Conv2d(3, ch[out_size], 1)
        self.conv_body_down = nn.ModuleList()
        in_ch = ch[out_size]
        for lv in range(log_size, 2, -1):  # out_size -> 4
            self.conv_body_down.append(ResBlock(in_ch, ch[2 ** (lv - 1)], 0.5))
            in_ch = ch[2 ** (lv - 1)]
        self.final_conv = nn.Conv2d(in_ch, ch[4], 3, 1, 1)
        # module order = the released state dict's key order
        self.conv_body_up = nn.ModuleList()
        self.toRGB = nn.ModuleList()  # intermediate RGB outputs (training only); kept for the checkpoint's keys
        in_ch = ch[4]
        levels = [ch[2 ** lv] for lv in range(3, log_size + 1)]  # channels at 8 .. out_size
        for out_ch in levels:
            self.conv_body_up.append(ResBlock(in_ch, out_ch, 2))
            self.toRGB.append(nn.Conv2d(out_ch, 3, 1))
            in_ch = out_ch
        self.num_latent = log_size * 2 - 2
        self.final_linear = nn.Linear(ch[4] * 4 * 4, self.num_latent * style_dim)  # different_w: one w per layer
        self.stylegan_decoder = StyleGAN2DecoderSFT(out_size, style_dim, num_mlp, channel_multiplier, narrow,
                                                    sft_half)
        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        for branch in (self.condition_scale, self.condition_shift):
            for out_ch in levels:
                sft_ch = out_ch if sft_half else out_ch * 2
                branch.append(nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, 1, 1), nn.LeakyReLU(LRELU_SLOPE),
                                            nn.Conv2d(out_ch, sft_ch, 3, 1, 1)))

    def forward(self, x: torch.Tensor, noise: str | None = None) -> torch.Tensor:
        """x (B, 3, S, S) RGB in [-1, 1] -> restored (B, 3, S, S), about [-1, 1]. ``noise``: "fixed" | "random"
        (default: the module's ``noise``)."""
        feat = F.leaky_relu(self.conv_body_first(x), LRELU_SLOPE)
        skips = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = F.leaky_relu(self.final_conv(feat), LRELU_SLOPE)  # (B, 256, 4, 4)
        latent = self.final_linear(feat.flatten(1)).view(x.shape[0], self.num_latent, self.style_dim)
        conditions = []
        for k, block in enumerate(self.conv_body_up):
            feat = block(feat + skips[-1 - k])
            conditions.append((self.condition_scale[k](feat), self.condition_shift[k](feat)))
        return self.stylegan_decoder(latent, conditions, noise or self.noise)


def load_gfpgan(path, device: str = "cpu", noise: str = "fixed") -> GFPGANv1Clean:
    """A GFPGANv1.4-format file (``{'params_ema': state_dict}``, or a plain state dict) in eval mode on ``device``.
    Loaded with ``weights_only=True``; another kind of file raises CheckpointMismatch."""
    from lipsync_cli.checkpoint_io import load_network

    with torch.device("meta"):  # built without memory; the file's tensors are assigned
        net = GFPGANv1Clean(noise=noise)
    load_network(path, net, KIND, "pass GFPGANv1.4.pth (`lipsync weights download gfpgan_v14`) or an .onnx restorer",
                 assign=True)
    return net.eval().to(device)
