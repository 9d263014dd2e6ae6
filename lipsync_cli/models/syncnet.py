"""Wav2Lip's lip-sync expert (``SyncNet_color``, Prajwal et al. 2020 sec. 3.1); loads lipsync_expert.pth.

The expert embeds a 0.2 s mel window and the lower half of 5 consecutive RGB face crops into a shared 512-d
space; in-sync pairs have a high cosine similarity. It is trained with BCE on that cosine and then frozen to
give the generator its sync loss (:func:`sync_loss_from_generated`).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from lipsync_cli.checkpoint_kinds import KindSignature, register_kind
from lipsync_cli.constants import FACE_HALF, FACE_SIZE, MEL_WINDOW, N_MELS, SYNC_T
from lipsync_cli.models.blocks import Conv2d

EMBED_DIM = 512  # size of both embeddings


# lipsync_expert.pth and our experts (checkpoint.detect_kind); a generator also has audio/face encoders
register_kind(KindSignature(
    "syncnet_color", "SyncNet lip-sync expert (lipsync_expert.pth)", requires=("face_encoder.", "audio_encoder."),
    excludes=("face_decoder_blocks.",)))


class SyncNetColor(nn.Module):
    """Face encoder on (B, 3*SYNC_T, 48, 96) lower-half crops and audio encoder on (B, 1, 80, 16) mel windows.

    Key names (``face_encoder.<i>.conv_block.{0,1}``, ``audio_encoder.<i>...``) are the released file's.
    """

    def __init__(self):
        super().__init__()
        c = 3 * SYNC_T  # 5 RGB frames stacked on channels

        def res(ch: int) -> Conv2d:
            return Conv2d(ch, ch, kernel_size=3, stride=1, padding=1, residual=True)

        self.face_encoder = nn.Sequential(  # (B, 15, 48, 96)
            Conv2d(c, 32, kernel_size=(7, 7), stride=1, padding=3),  # (B, 32, 48, 96)
            Conv2d(32, 64, kernel_size=5, stride=(1, 2), padding=1),  # (B, 64, 46, 47)
            res(64), res(64),
            Conv2d(64, 128, kernel_size=3, stride=2, padding=1),  # (B, 128, 23, 24)
            res(128), res(128), res(128),
            Conv2d(128, 256, kernel_size=3, stride=2, padding=1),  # (B, 256, 12, 12)
            res(256), res(256),
            Conv2d(256, 512, kernel_size=3, stride=2, padding=1),  # (B, 512, 6, 6)
            res(512), res(512),
            Conv2d(512, 512, kernel_size=3, stride=2, padding=1),  # (B, 512, 3, 3)
            Conv2d(512, 512, kernel_size=3, stride=1, padding=0),  # (B, 512, 1, 1)
            Conv2d(512, 512, kernel_size=1, stride=1, padding=0),
        )
        self.audio_encoder = nn.Sequential(  # (B, 1, 80, 16)
            Conv2d(1, 32, kernel_size=3, stride=1, padding=1),
            res(32), res(32),
            Conv2d(32, 64, kernel_size=3, stride=(3, 1), padding=1),  # (B, 64, 27, 16)
            res(64), res(64),
            Conv2d(64, 128, kernel_size=3, stride=3, padding=1),  # (B, 128, 9, 6)
            res(128), res(128),
            Conv2d(128, 256, kernel_size=3, stride=(3, 2), padding=1),  # (B, 256, 3, 3)
            res(256), res(256),
            Conv2d(256, 512, kernel_size=3, stride=1, padding=0),  # (B, 512, 1, 1)
            Conv2d(512, 512, kernel_size=1, stride=1, padding=0),
        )

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, 1, 80, 16), face (B, 15, 48, 96) BGR in [0, 1] -> (audio_emb (B, 512), face_emb (B, 512)),
        both L2-normalised."""
        face_emb = self.face_encoder(face).flatten(1)  # (B, 512)
        audio_emb = self.audio_encoder(mel).flatten(1)  # (B, 512)
        return F.normalize(audio_emb, p=2, dim=1), F.normalize(face_emb, p=2, dim=1)


def cosine_bce(audio_emb: torch.Tensor, face_emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean BCE between the cosine similarity of (B, 512) embedding pairs and labels y, (B, 1) or (B,),
    in {0, 1} (1 = in sync). The expert's ReLU features make the cosine >= 0, so it is a probability."""
    d = F.cosine_similarity(audio_emb, face_emb)  # (B,)
    return F.binary_cross_entropy(d.unsqueeze(1), y.reshape(-1, 1).to(d.dtype))


def clip_to_expert_input(g: torch.Tensor) -> torch.Tensor:
    """A clip (B, 3, T, 96, 96) -> the expert's face input (B, 3*T, 48, 96): lower half, frames on channels
    (frame-major: channels 0-2 are frame 0)."""
    g = g[:, :, :, g.size(3) // 2:]  # (B, 3, T, 48, 96)
    return torch.cat([g[:, :, t] for t in range(g.size(2))], dim=1)  # (B, 3*T, 48, 96)


def sync_loss_from_generated(expert: SyncNetColor, mel: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Wav2Lip's generator sync loss: the expert's cosine BCE against "in sync" (ones) for generated frames.

    mel: (B, 1, 80, 16) the window matching the clip; g: (B, 3, T=5, 96, 96) generated BGR faces in [0, 1].
    Gradients flow into ``g``; keep the expert frozen (``requires_grad_(False)``, eval mode)."""
    if g.dim() != 5 or g.size(2) != SYNC_T or g.shape[-2:] != (FACE_SIZE, FACE_SIZE):
        raise ValueError(f"expected a (B, 3, {SYNC_T}, {FACE_SIZE}, {FACE_SIZE}) clip, got {tuple(g.shape)}")
    if mel.shape[-2:] != (N_MELS, MEL_WINDOW):
        raise ValueError(f"expected a (B, 1, {N_MELS}, {MEL_WINDOW}) mel window, got {tuple(mel.shape)}")
    face = clip_to_expert_input(g)  # (B, 15, FACE_HALF, 96)
    assert face.size(2) == FACE_HALF
    a, v = expert(mel, face)
    y = torch.ones(g.size(0), 1, dtype=a.dtype, device=a.device)
    return cosine_bce(a, v, y)


def load_expert(path: str | os.PathLike, device: str | torch.device = "cpu") -> SyncNetColor:
    """Load ``lipsync_expert.pth`` (``{'state_dict': ...}``, optionally ``module.``-prefixed) or our re-save;
    eval mode, on ``device``. Other kinds of weights raise CheckpointMismatch naming both kinds."""
    from lipsync_cli.checkpoint_io import load_network

    net = load_network(path, SyncNetColor(), "syncnet_color",
                       "pass the released lipsync_expert.pth or an expert trained by lipsync")
    return net.to(device).eval()
