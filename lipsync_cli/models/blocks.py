"""Wav2Lip's convolution blocks. Their submodule names (``conv_block.0`` conv, ``conv_block.1`` BN) are
what the official checkpoints' keys are made of, so every network that shares layers with Wav2Lip uses these."""

from __future__ import annotations

import torch
from torch import nn


class Conv2d(nn.Module):
    """Conv -> BatchNorm -> ReLU, optionally residual (input added before the ReLU; shapes must match)."""

    def __init__(self, cin: int, cout: int, kernel_size, stride, padding, residual: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class NoNormConv2d(nn.Module):
    """Conv -> LeakyReLU(0.01), no normalisation (the visual-quality discriminator)."""

    def __init__(self, cin: int, cout: int, kernel_size, stride, padding):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding))
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


class Conv2dTranspose(nn.Module):
    """Transposed conv -> BatchNorm -> ReLU (the generator's upsampling)."""

    def __init__(self, cin: int, cout: int, kernel_size, stride, padding, output_padding=0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))
