"""Residual CBAM (Woo et al. 2018) as AttnWav2Lip uses it (Wang et al. 2022, eq. 8):

    F'  = F  + F  * CAM(F)      channel attention, (B, C, 1, 1) broadcast over H, W
    F'' = F' + F' * SAM(F')     spatial attention, (B, 1, H, W) broadcast over C

CAM(F) = sigmoid(MLP(avgpool_HW(F)) + MLP(maxpool_HW(F))), one MLP (1x1 convs C -> C/r -> C) shared by
both descriptors. SAM(F) = sigmoid(conv_kxk([mean_C(F), max_C(F)])). The residual form keeps a block close to
identity when the attention saturates low, which is what lets an official Wav2Lip checkpoint initialise the
network.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_REDUCTION = 16  # CBAM's channel reduction ratio r
DEFAULT_MIN_HIDDEN = 4  # floor on C/r so the 16-channel stage keeps a 4-unit bottleneck instead of 1
DEFAULT_SPATIAL_KERNEL = 7  # CBAM's SAM kernel; the AttnWav2Lip paper allows 7x7 or 3x3


def cbam_hidden(channels: int, reduction: int = DEFAULT_REDUCTION,
                min_hidden: int = DEFAULT_MIN_HIDDEN) -> int:
    """Width of the channel-attention bottleneck: C // r, at least ``min_hidden``, at most C."""
    return min(channels, max(channels // reduction, min_hidden))


class ChannelAttention(nn.Module):
    """CAM: (B, C, H, W) -> (B, C, 1, 1) weights in (0, 1)."""

    def __init__(self, channels: int, reduction: int = DEFAULT_REDUCTION,
                 min_hidden: int = DEFAULT_MIN_HIDDEN):
        super().__init__()
        hidden = cbam_hidden(channels, reduction, min_hidden)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        mx = x.amax(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))


class SpatialAttention(nn.Module):
    """SAM: (B, C, H, W) -> (B, 1, H, W) weights in (0, 1)."""

    def __init__(self, kernel_size: int = DEFAULT_SPATIAL_KERNEL):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"spatial attention kernel must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return torch.sigmoid(self.conv(desc))


class ResidualCBAM(nn.Module):
    """Channel then spatial attention, each residual (eq. 8). Shape-preserving: (B, C, H, W) -> same."""

    def __init__(self, channels: int, reduction: int = DEFAULT_REDUCTION,
                 spatial_kernel: int = DEFAULT_SPATIAL_KERNEL, min_hidden: int = DEFAULT_MIN_HIDDEN):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction, min_hidden)
        self.spatial = SpatialAttention(spatial_kernel)

    def forward_with_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (F'', SAM(F')): the output and its spatial attention map (B, 1, H, W)."""
        x = x + x * self.channel(x)  # F'
        m = self.spatial(x)  # (B, 1, H, W)
        return x + x * m, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_map(x)[0]
