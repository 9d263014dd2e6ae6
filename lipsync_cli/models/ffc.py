"""Fast Fourier Convolution (Chi et al., NeurIPS 2020) as LaMa uses it (Suvorov et al. 2022), and AdaIN.

An FFC splits its channels into a local part (ordinary kxk convolutions) and a global part whose main path is
a spectral transform: a 1x1 conv, then a Fourier unit (real 2-D FFT over H, W -> 1x1 conv + BN + ReLU on the
real and imaginary parts stacked as channels -> inverse FFT) added back to its input, then a 1x1 conv. One
spectral convolution sees the whole feature map, which gives the semantic alignment module a global receptive
field.

The FFTs run in float32 even under autocast (bf16 FFTs are unsupported on CPU and inaccurate everywhere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def spectral_conv(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """The Fourier unit's arithmetic: irfft2(ReLU(BN(conv([Re; Im] of rfft2(x))))), float32 inside.

    x: (B, C, H, W) -> (B, C', H, W), ``conv`` maps 2C -> 2C' channels; returned in x's dtype.
    """
    dtype = x.dtype
    h, w = x.shape[-2:]
    with torch.autocast(device_type=x.device.type, enabled=False):
        spec = torch.fft.rfft2(x.float(), norm="ortho")  # (B, C, H, W//2+1) complex64
        f = torch.cat([spec.real, spec.imag], dim=1)  # (B, 2C, H, W//2+1)
        f = F.relu(bn(conv(f.to(conv.weight.dtype)))).float()  # (B, 2C', H, W//2+1)
        re, im = f.chunk(2, dim=1)
        out = torch.fft.irfft2(torch.complex(re, im), s=(h, w), norm="ortho")  # (B, C', H, W)
    return out.to(dtype)


class FourierUnit(nn.Module):
    """(B, cin, H, W) -> (B, cout, H, W) through the frequency domain (see :func:`spectral_conv`)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * cin, 2 * cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(2 * cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spectral_conv(x, self.conv, self.bn)


class SpectralTransform(nn.Module):
    """The global-to-global path: 1x1 conv (cin -> cout/2) + BN + ReLU, x + FU(x) [+ LFU(x)], 1x1 conv.

    ``lfu`` adds FFC's local Fourier unit: the first quarter of the channels cut into 2x2 spatial tiles
    stacked on the channel axis, a Fourier unit on those, tiled back (needs cout/2 divisible by 4, even H, W).
    """

    def __init__(self, cin: int, cout: int, lfu: bool = False):
        super().__init__()
        if cout % 2:
            raise ValueError(f"spectral transform needs an even number of output channels, got {cout}")
        mid = cout // 2
        if lfu and mid % 4:
            raise ValueError(f"the local Fourier unit needs cout/2 divisible by 4, got {mid}")
        self.conv1 = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU())
        self.fu = FourierUnit(mid, mid)
        self.lfu = FourierUnit(mid, mid) if lfu else None
        self.conv2 = nn.Conv2d(mid, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, mid, H, W)
        out = x + self.fu(x)
        if self.lfu is not None:
            c, h, w = x.shape[1:]
            xs = x[:, : c // 4]  # (B, mid/4, H, W)
            xs = torch.cat(torch.split(xs, h // 2, dim=2), dim=1)  # (B, mid/2, H/2, W)
            xs = torch.cat(torch.split(xs, w // 2, dim=3), dim=1)  # (B, mid, H/2, W/2)
            out = out + self.lfu(xs).repeat(1, 1, 2, 2)  # (B, mid, H, W)
        return self.conv2(out)


class FFC(nn.Module):
    """One FFC layer, BN + ReLU per branch, on a single tensor whose last ``round(C * ratio)`` channels are
    the global part: (B, cin, H, W) -> (B, cout, H, W), spatial size kept.

        y_local  = conv_l2l(x_local) + conv_g2l(x_global)
        y_global = conv_l2g(x_local) + SpectralTransform(x_global)
    """

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, ratio: float = 0.75, lfu: bool = False):
        super().__init__()
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"FFC global ratio must be in (0, 1), got {ratio}")
        self.cin_g, self.cout_g = round(cin * ratio), round(cout * ratio)
        self.cin_l, self.cout_l = cin - self.cin_g, cout - self.cout_g
        pad = kernel_size // 2
        self.conv_l2l = nn.Conv2d(self.cin_l, self.cout_l, kernel_size, padding=pad, bias=False)
        self.conv_l2g = nn.Conv2d(self.cin_l, self.cout_g, kernel_size, padding=pad, bias=False)
        self.conv_g2l = nn.Conv2d(self.cin_g, self.cout_l, kernel_size, padding=pad, bias=False)
        self.conv_g2g = SpectralTransform(self.cin_g, self.cout_g, lfu)
        self.bn_l, self.bn_g = nn.BatchNorm2d(self.cout_l), nn.BatchNorm2d(self.cout_g)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_l, x_g = x[:, : self.cin_l], x[:, self.cin_l:]
        y_l = self.conv_l2l(x_l) + self.conv_g2l(x_g)  # (B, cout_l, H, W)
        y_g = self.conv_l2g(x_l) + self.conv_g2g(x_g)  # (B, cout_g, H, W)
        return torch.cat([self.act(self.bn_l(y_l)), self.act(self.bn_g(y_g))], dim=1)


def adain(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Adaptive instance normalisation (Huang & Belongie 2017).

    Each channel of x (B, C, H, W) is normalised to zero mean / unit (biased) std over H, W, then multiplied
    by ``scale`` (B, C) and offset by ``shift`` (B, C): the output's per-channel mean is ``shift`` and its std
    ``|scale| * sqrt(var / (var + eps))``.
    """
    mu = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)  # (B, C, 1, 1)
    return (x - mu) * torch.rsqrt(var + eps) * scale[:, :, None, None] + shift[:, :, None, None]


def channel_stats(y: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(std, mean) of each channel of y (B, C, H, W) over H, W, each (B, C); std is sqrt(biased var + eps)."""
    mu = y.mean(dim=(2, 3))
    std = torch.sqrt(y.var(dim=(2, 3), unbiased=False) + eps)
    return std, mu
