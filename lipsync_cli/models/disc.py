"""Wav2Lip's visual-quality discriminator (``Wav2Lip_disc_qual``), loading ``visual_quality_disc.pth``.

It scores the lower half of each face crop (real = 1, generated = 0); the generator's adversarial term
(:meth:`Wav2LipDiscQual.perceptual_forward`) pushes generated mouths towards "real".
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from lipsync_cli.checkpoint_kinds import KindSignature, register_kind
from lipsync_cli.models.blocks import NoNormConv2d

# visual_quality_disc.pth (checkpoint.detect_kind)
register_kind(KindSignature(
    "disc_qual", "Wav2Lip visual-quality discriminator", requires=("face_encoder_blocks.", "binary_pred.")))


class Wav2LipDiscQual(nn.Module):
    """Conv encoder on (N, 3, 48, 96) lower-half crops -> (N, 1) probability of "real"; no normalisation."""

    def __init__(self):
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(NoNormConv2d(3, 32, kernel_size=7, stride=1, padding=3)),  # (N, 32, 48, 96)
            nn.Sequential(NoNormConv2d(32, 64, kernel_size=5, stride=(1, 2), padding=2),  # (N, 64, 48, 48)
                          NoNormConv2d(64, 64, kernel_size=5, stride=1, padding=2)),
            nn.Sequential(NoNormConv2d(64, 128, kernel_size=5, stride=2, padding=2),  # (N, 128, 24, 24)
                          NoNormConv2d(128, 128, kernel_size=5, stride=1, padding=2)),
            nn.Sequential(NoNormConv2d(128, 256, kernel_size=5, stride=2, padding=2),  # (N, 256, 12, 12)
                          NoNormConv2d(256, 256, kernel_size=5, stride=1, padding=2)),
            nn.Sequential(NoNormConv2d(256, 512, kernel_size=3, stride=2, padding=1),  # (N, 512, 6, 6)
                          NoNormConv2d(512, 512, kernel_size=3, stride=1, padding=1)),
            nn.Sequential(NoNormConv2d(512, 512, kernel_size=3, stride=2, padding=1),  # (N, 512, 3, 3)
                          NoNormConv2d(512, 512, kernel_size=3, stride=1, padding=1)),
            nn.Sequential(NoNormConv2d(512, 512, kernel_size=3, stride=1, padding=0),  # (N, 512, 1, 1)
                          NoNormConv2d(512, 512, kernel_size=1, stride=1, padding=0)),
        ])
        self.binary_pred = nn.Sequential(nn.Conv2d(512, 1, kernel_size=1, stride=1, padding=0), nn.Sigmoid())

    @staticmethod
    def to_2d(clip: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (T*B, 3, H, W), time-major (row t*B + b is frame t of clip b), as upstream."""
        return torch.cat([clip[:, :, t] for t in range(clip.size(2))], dim=0)

    @staticmethod
    def lower_half(faces: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 3, H - H//2, W): the mouth half of each crop."""
        return faces[:, :, faces.size(2) // 2:]

    def _score(self, clip: torch.Tensor) -> torch.Tensor:
        x = self.lower_half(self.to_2d(clip))  # (T*B, 3, 48, 96)
        for block in self.face_encoder_blocks:
            x = block(x)  # ... -> (T*B, 512, 1, 1)
        return self.binary_pred(x).view(len(x), -1)  # (T*B, 1)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """clip (B, 3, T, 96, 96) BGR in [0, 1] -> (B*T, 1) probability each frame is real.

        Rows are time-major: row t*B + b is frame t of clip b."""
        return self._score(clip)

    def perceptual_forward(self, fake_clip: torch.Tensor) -> torch.Tensor:
        """The generator's adversarial loss: mean BCE of the scores of generated frames (B, 3, T, 96, 96)
        against "real" (ones). Gradients flow into ``fake_clip``."""
        pred = self._score(fake_clip)  # (T*B, 1)
        return F.binary_cross_entropy(pred, torch.ones_like(pred))


def load_discriminator(path: str | os.PathLike, device: str | torch.device = "cpu") -> Wav2LipDiscQual:
    """Load ``visual_quality_disc.pth`` (``{'state_dict': ...}``, optionally ``module.``-prefixed) or our
    re-save; eval mode, on ``device`` (call ``.train()`` to fine-tune). Other kinds raise
    CheckpointMismatch."""
    from lipsync_cli.checkpoint_io import load_network

    net = load_network(path, Wav2LipDiscQual(), "disc_qual", "pass the released visual_quality_disc.pth")
    return net.to(device).eval()
