"""SyncNet v2 (Chung & Zisserman 2016, "Out of time"), the network behind LSE-D / LSE-C.

Layer layout and submodule indices follow the released ``syncnet_v2.model`` (joonson/syncnet_python), so
that plain state dict loads unchanged: ``netcnnaud.*`` / ``netfcaud.*`` embed 0.2 s of MFCC, ``netcnnlip.*`` /
``netfclip.*`` embed 5 frames of 224x224 face crop; both into 1024-d, compared with a Euclidean distance.

Inputs (no normalisation anywhere, exactly as the reference feeds them):
    audio: (B, 1, 13, 20)        MFCC, 13 coefficients x 20 steps at 100 Hz
    video: (B, 3, 5, 224, 224)   BGR pixel values in [0, 255] as float, frames on the depth axis
"""

from __future__ import annotations

import os

import torch
from torch import nn

from lipsync_cli.checkpoint_kinds import KindSignature, register_kind

EMBED_DIM = 1024  # output size of both branches (``num_layers_in_fc_layers``)
MFCC_STEPS = 20  # audio window: 20 MFCC steps = 0.2 s = 5 video frames at 25 fps
N_MFCC = 13
CROP_SIZE = 224  # face crop side the lip branch expects, pixels


def _conv_bn_relu(cin: int, cout: int, kernel, stride=1, padding=0, dims: int = 2) -> list[nn.Module]:
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    return [
        conv(cin, cout, kernel_size=kernel, stride=stride, padding=padding),
        bn(cout),
        nn.ReLU(inplace=True),
    ]


def _fc_head(dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim_out))


# syncnet_v2.model (checkpoint.detect_kind)
register_kind(KindSignature(
    "syncnet_v2", "SyncNet v2 evaluation model (syncnet_v2.model)", requires=("netcnnaud.", "netcnnlip.")))


class SyncNetV2(nn.Module):
    """The two-stream SyncNet evaluated by every lip-sync paper. Sequential indices matter: they are the
    keys."""

    def __init__(self, embed_dim: int = EMBED_DIM):
        super().__init__()
        # audio: (B, 1, 13, 20) -> (B, 512, 1, 1)
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu(1, 64, (3, 3), padding=(1, 1)),  # 0 1 2
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),  # 3 (identity, kept for the indices)
            *_conv_bn_relu(64, 192, (3, 3), padding=(1, 1)),  # 4 5 6
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),  # 7
            *_conv_bn_relu(192, 384, (3, 3), padding=(1, 1)),  # 8 9 10
            *_conv_bn_relu(384, 256, (3, 3), padding=(1, 1)),  # 11 12 13
            *_conv_bn_relu(256, 256, (3, 3), padding=(1, 1)),  # 14 15 16
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),  # 17
            *_conv_bn_relu(256, 512, (5, 4)),  # 18 19 20
        )
        self.netfcaud = _fc_head(embed_dim)
        self.netfclip = _fc_head(embed_dim)
        # video: (B, 3, 5, 224, 224) -> (B, 512, 1, 1, 1)
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu(3, 96, (5, 7, 7), stride=(1, 2, 2), dims=3),  # 0 1 2
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 3
            *_conv_bn_relu(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1), dims=3),  # 4 5 6
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # 7
            *_conv_bn_relu(256, 256, (1, 3, 3), padding=(0, 1, 1), dims=3),  # 8 9 10
            *_conv_bn_relu(256, 256, (1, 3, 3), padding=(0, 1, 1), dims=3),  # 11 12 13
            *_conv_bn_relu(256, 256, (1, 3, 3), padding=(0, 1, 1), dims=3),  # 14 15 16
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 17
            *_conv_bn_relu(256, 512, (1, 6, 6), dims=3),  # 18 19 20
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 20) MFCC -> (B, 1024) audio embedding."""
        mid = self.netcnnaud(mfcc)  # (B, 512, 1, 1)
        return self.netfcaud(mid.flatten(1))  # (B, 1024)

    def forward_lip(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, 5, 224, 224) BGR 0..255 -> (B, 1024) lip embedding."""
        mid = self.netcnnlip(video)  # (B, 512, 1, 1, 1)
        return self.netfclip(mid.flatten(1))  # (B, 1024)

    def forward_lipfeat(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, 5, 224, 224) -> (B, 512): the lip branch before its fully connected head."""
        return self.netcnnlip(video).flatten(1)

    def forward(self, mfcc: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both embeddings: ((B, 1024) audio, (B, 1024) lip)."""
        return self.forward_aud(mfcc), self.forward_lip(video)


def load_syncnet_v2(path: str | os.PathLike, device: str = "cpu") -> SyncNetV2:
    """Load ``syncnet_v2.model`` (a plain state dict) or one of our checkpoints of it; eval mode, on
    ``device``.

    The released file predates BatchNorm's ``num_batches_tracked`` buffers, so those may be absent (they are
    unused in eval mode); every other key must be present with its shape.
    """
    from lipsync_cli.checkpoint_io import expect_kind, load_file, unwrap_state_dict
    from lipsync_cli.errors import CheckpointMismatch

    obj = load_file(path)
    expect_kind(path, obj, ("syncnet_v2",))
    sd = unwrap_state_dict(obj)
    model = SyncNetV2()
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as err:  # a shape mismatch
        raise CheckpointMismatch(
            f"{path} does not fit SyncNet v2: {str(err).splitlines()[-1].strip()[:200]}",
            "pass the syncnet_v2.model released with joonson/syncnet_python",
        ) from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointMismatch(
            f"{path} does not fit SyncNet v2: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})",
            "pass the syncnet_v2.model released with joonson/syncnet_python",
        )
    return model.to(device).eval()
