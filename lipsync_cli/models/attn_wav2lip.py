"""AttnWav2Lip (Wang et al. 2022, arXiv 2203.03984, section 3.2, eq. 8, Algorithm 1).

Wav2Lip's generator with a residual CBAM (channel then spatial attention) after each of the 7 face-encoder
blocks and each of the 7 face-decoder blocks; the decoder's attention acts on the block output before the
encoder skip is concatenated (Algorithm 1, lines 12-14), and no attention touches the raw input image.

Every layer Wav2Lip has keeps Wav2Lip's name, so an official ``wav2lip.pth`` initialises all of them
(:meth:`AttnWav2Lip.from_wav2lip_state_dict`, ``train generator --init``, or
``checkpoint.load_generator(path, arch="attn_wav2lip", untrained=True)``: without ``untrained`` that is refused, as
dubbing with it would run untrained attention); the attention layers live under ``face_encoder_attn.N.cbam.*`` /
``face_decoder_attn.N.cbam.*`` and start fresh.
"""

from __future__ import annotations

import torch
from torch import nn

from lipsync_cli.checkpoint_kinds import KindSignature, register_kind
from lipsync_cli.models.cbam import (
    DEFAULT_MIN_HIDDEN,
    DEFAULT_REDUCTION,
    DEFAULT_SPATIAL_KERNEL,
    ResidualCBAM,
)
from lipsync_cli.models.wav2lip import (
    build_audio_encoder,
    build_face_decoder,
    build_face_encoder,
    build_output_block,
    fold_time,
    has_attention_keys,
    unfold_time,
)

ENCODER_CHANNELS = (16, 32, 64, 128, 256, 512, 512)  # output channels of Wav2Lip's face-encoder blocks
DECODER_CHANNELS = (512, 512, 512, 384, 256, 128, 64)  # output channels of its face-decoder blocks (pre-skip)


# Wav2Lip's layers plus attention slots (checkpoint.detect_kind)
register_kind(KindSignature(
    "attn_wav2lip", "AttnWav2Lip generator",
    requires=("face_encoder_blocks.", "face_decoder_blocks.", "output_block."), test=has_attention_keys,
    generator=True))


def _slot(channels: int, reduction: int, spatial_kernel: int, min_hidden: int) -> nn.ModuleDict:
    # the ".cbam." in the key is how an AttnWav2Lip file is told from a Wav2Lip one (wav2lip.has_attention_keys)
    return nn.ModuleDict({"cbam": ResidualCBAM(channels, reduction, spatial_kernel, min_hidden)})


class AttnWav2Lip(nn.Module):
    """Wav2Lip + residual CBAM after every face encoder/decoder block. See ``lipsync_cli.models`` for I/O.

    Args:
        reduction: channel-attention reduction ratio r (CBAM's default 16).
        spatial_kernel: spatial-attention conv kernel, 7 (CBAM default) or 3 (both allowed by the paper).
        min_hidden: floor on the channel-attention bottleneck width C/r (16 channels -> 4 units, not 1).

    Set ``record_attention = True`` to keep the spatial attention maps of the last forward in
    ``attention_maps``: {"enc0".."enc6", "dec0".."dec6": (N, 1, H, W)} where N is the folded batch.
    """

    def __init__(self, reduction: int = DEFAULT_REDUCTION, spatial_kernel: int = DEFAULT_SPATIAL_KERNEL,
                 min_hidden: int = DEFAULT_MIN_HIDDEN):
        super().__init__()
        self.face_encoder_blocks = build_face_encoder()
        self.audio_encoder = build_audio_encoder()
        self.face_decoder_blocks = build_face_decoder()
        self.output_block = build_output_block()
        self.face_encoder_attn = nn.ModuleList(
            [_slot(c, reduction, spatial_kernel, min_hidden) for c in ENCODER_CHANNELS])
        self.face_decoder_attn = nn.ModuleList(
            [_slot(c, reduction, spatial_kernel, min_hidden) for c in DECODER_CHANNELS])
        self.arch = "attn_wav2lip"
        self.config = {"reduction": reduction, "spatial_kernel": spatial_kernel, "min_hidden": min_hidden}
        self.record_attention = False
        self.attention_maps: dict[str, torch.Tensor] = {}

    @staticmethod
    def attention_names() -> list[str]:
        """Names of the attention points, in forward order (keys of ``attention_maps``)."""
        return ([f"enc{i}" for i in range(len(ENCODER_CHANNELS))]
                + [f"dec{i}" for i in range(len(DECODER_CHANNELS))])

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, 1, 80, 16) mel windows -> (N, 512, 1, 1) embeddings."""
        return self.audio_encoder(mel)

    def _attend(self, slot: nn.ModuleDict, x: torch.Tensor, name: str) -> torch.Tensor:
        x, m = slot["cbam"].forward_with_map(x)
        if self.record_attention:
            self.attention_maps[name] = m.detach()
        return x

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        mel, face, batch = fold_time(mel, face)
        if self.record_attention:
            self.attention_maps = {}
        x = self.encode_audio(mel)  # (N, 512, 1, 1)
        feats = []
        h = face  # (N, 6, 96, 96)
        for i, (block, slot) in enumerate(zip(self.face_encoder_blocks, self.face_encoder_attn, strict=True)):
            h = self._attend(slot, block(h), f"enc{i}")
            feats.append(h)
        for i, (block, slot) in enumerate(zip(self.face_decoder_blocks, self.face_decoder_attn, strict=True)):
            x = self._attend(slot, block(x), f"dec{i}")
            x = torch.cat((x, feats.pop()), dim=1)
        out = self.output_block(x)  # (N, 3, 96, 96)
        return unfold_time(out, batch)

    @classmethod
    def from_wav2lip_state_dict(cls, state_dict: dict, **config) -> AttnWav2Lip:
        """A fresh AttnWav2Lip whose Wav2Lip layers are copied from an (unwrapped) Wav2Lip state dict.

        Raises CheckpointMismatch unless every non-attention tensor is present with the right shape and
        the dict holds nothing else.
        """
        from lipsync_cli.errors import CheckpointMismatch

        model = cls(**config)
        own = model.state_dict()
        shared = {k for k in own if not k.startswith(("face_encoder_attn.", "face_decoder_attn."))}
        missing = sorted(shared - set(state_dict))
        extra = sorted(set(state_dict) - shared)
        bad = sorted(k for k in shared & set(state_dict) if tuple(state_dict[k].shape) != tuple(own[k].shape))
        if missing or extra or bad:
            raise CheckpointMismatch(
                "not a Wav2Lip generator state dict: "
                + "; ".join(f"{what} {ks[:3]}{'...' if len(ks) > 3 else ''}" for what, ks in
                            (("missing", missing), ("unexpected", extra), ("wrong shape", bad)) if ks))
        model.load_state_dict(state_dict, strict=False)
        return model
