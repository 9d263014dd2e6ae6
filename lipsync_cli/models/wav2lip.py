"""The Wav2Lip generator (Prajwal et al., ACM MM 2020), layer for layer as the official release.

The submodule names and shapes reproduce the official state dict exactly (``face_encoder_blocks.N.M``,
``audio_encoder.N``, ``face_decoder_blocks.N.M``, ``output_block``), so ``wav2lip.pth`` and
``wav2lip_gan.pth`` load with ``strict=True`` once DataParallel's ``module.`` prefix is stripped.

Shapes (per frame): face (6, 96, 96) -> encoder features at 96, 48, 24, 12, 6, 3, 1 pixels;
mel window (1, 80, 16) -> audio embedding (512, 1, 1); the decoder upsamples the embedding back to 96 pixels,
concatenating the matching encoder feature (U-Net skip) after every block.
"""

from __future__ import annotations

import torch
from torch import nn

from lipsync_cli.checkpoint_kinds import KindSignature, register_kind
from lipsync_cli.models.blocks import Conv2d, Conv2dTranspose


def _res(c: int) -> Conv2d:
    """A 3x3 same-size residual block on ``c`` channels."""
    return Conv2d(c, c, 3, 1, 1, residual=True)


def build_face_encoder() -> nn.ModuleList:
    """The 7 face-encoder stages: (B, 6, 96, 96) -> 16@96, 32@48, 64@24, 128@12, 256@6, 512@3, 512@1."""
    return nn.ModuleList([
        nn.Sequential(Conv2d(6, 16, 7, 1, 3)),  # (B, 16, 96, 96)
        nn.Sequential(Conv2d(16, 32, 3, 2, 1), _res(32), _res(32)),  # (B, 32, 48, 48)
        nn.Sequential(Conv2d(32, 64, 3, 2, 1), _res(64), _res(64), _res(64)),  # (B, 64, 24, 24)
        nn.Sequential(Conv2d(64, 128, 3, 2, 1), _res(128), _res(128)),  # (B, 128, 12, 12)
        nn.Sequential(Conv2d(128, 256, 3, 2, 1), _res(256), _res(256)),  # (B, 256, 6, 6)
        nn.Sequential(Conv2d(256, 512, 3, 2, 1), _res(512)),  # (B, 512, 3, 3)
        nn.Sequential(Conv2d(512, 512, 3, 1, 0), Conv2d(512, 512, 1, 1, 0)),  # (B, 512, 1, 1)
    ])


def build_audio_encoder() -> nn.Sequential:
    """Mel window (B, 1, 80, 16) -> audio embedding (B, 512, 1, 1)."""
    return nn.Sequential(
        Conv2d(1, 32, 3, 1, 1), _res(32), _res(32),  # (B, 32, 80, 16)
        Conv2d(32, 64, 3, (3, 1), 1), _res(64), _res(64),  # (B, 64, 27, 16)
        Conv2d(64, 128, 3, 3, 1), _res(128), _res(128),  # (B, 128, 9, 6)
        Conv2d(128, 256, 3, (3, 2), 1), _res(256),  # (B, 256, 3, 3)
        Conv2d(256, 512, 3, 1, 0),  # (B, 512, 1, 1)
        Conv2d(512, 512, 1, 1, 0),  # (B, 512, 1, 1)
    )


def build_face_decoder() -> nn.ModuleList:
    """The 7 decoder stages; each stage's input is the previous output concatenated with an encoder skip."""
    return nn.ModuleList([
        nn.Sequential(Conv2d(512, 512, 1, 1, 0)),  # (B, 512, 1, 1)
        nn.Sequential(Conv2dTranspose(1024, 512, 3, 1, 0), _res(512)),  # (B, 512, 3, 3)
        nn.Sequential(Conv2dTranspose(1024, 512, 3, 2, 1, output_padding=1), _res(512), _res(512)),  # 6x6
        nn.Sequential(Conv2dTranspose(768, 384, 3, 2, 1, output_padding=1), _res(384), _res(384)),  # 12x12
        nn.Sequential(Conv2dTranspose(512, 256, 3, 2, 1, output_padding=1), _res(256), _res(256)),  # 24x24
        nn.Sequential(Conv2dTranspose(320, 128, 3, 2, 1, output_padding=1), _res(128), _res(128)),  # 48x48
        nn.Sequential(Conv2dTranspose(160, 64, 3, 2, 1, output_padding=1), _res(64), _res(64)),  # 96x96
    ])


def build_output_block() -> nn.Sequential:
    """(B, 80, 96, 96) -> (B, 3, 96, 96) BGR in [0, 1]."""
    return nn.Sequential(Conv2d(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())


def fold_time(mel: torch.Tensor, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """Fold the sequence form into a batch, time-major as upstream does.

    mel (B, T, 1, 80, 16) and face (B, 6, T, 96, 96) become (T*B, 1, 80, 16) and (T*B, 6, 96, 96) where row
    ``t*B + b`` is frame t of clip b. Returns (mel, face, B) or (mel, face, None) for the per-frame form.
    """
    if face.dim() == 4:
        if mel.dim() != 4:
            raise ValueError(f"mel {tuple(mel.shape)} does not match the per-frame face {tuple(face.shape)}")
        return mel, face, None
    if face.dim() != 5 or mel.dim() != 5:
        raise ValueError(f"expected face (B,6,T,96,96) and mel (B,T,1,80,16), got {tuple(face.shape)}, "
                         f"{tuple(mel.shape)}")
    b, t = face.shape[0], face.shape[2]
    mel = mel.transpose(0, 1).reshape(t * b, *mel.shape[2:])  # (T*B, 1, 80, 16)
    face = face.permute(2, 0, 1, 3, 4).reshape(t * b, *face.shape[1:2], *face.shape[3:])  # (T*B, 6, 96, 96)
    return mel, face, b


def unfold_time(out: torch.Tensor, batch: int | None) -> torch.Tensor:
    """Inverse of :func:`fold_time` on the output: (T*B, C, H, W) -> (B, C, T, H, W)."""
    if batch is None:
        return out
    t = out.shape[0] // batch
    return out.reshape(t, batch, *out.shape[1:]).permute(1, 2, 0, 3, 4)  # (B, C, T, H, W)


def has_attention_keys(keys) -> bool:
    """True when a state dict holds attention modules (AttnWav2Lip's residual CBAM slots): plain Wav2Lip has
    none, which is what tells the two apart."""
    return any(".cbam." in k or ".attention." in k for k in keys)


# what a Wav2Lip state dict looks like (checkpoint.detect_kind); upstream wav2lip.pth / wav2lip_gan.pth included
register_kind(KindSignature(
    "wav2lip", "Wav2Lip generator", requires=("face_encoder_blocks.", "face_decoder_blocks.", "output_block."),
    test=lambda keys: not has_attention_keys(keys), generator=True))


class Wav2Lip(nn.Module):
    """The official Wav2Lip generator. See ``lipsync_cli.models`` for the forward contract.

    Takes no configuration: the architecture is fixed by the released checkpoints.
    """

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = build_face_encoder()
        self.audio_encoder = build_audio_encoder()
        self.face_decoder_blocks = build_face_decoder()
        self.output_block = build_output_block()
        self.arch = "wav2lip"
        self.config: dict = {}

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, 1, 80, 16) mel windows -> (N, 512, 1, 1) embeddings."""
        return self.audio_encoder(mel)

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        mel, face, batch = fold_time(mel, face)
        x = self.encode_audio(mel)  # (N, 512, 1, 1)
        feats = []
        h = face  # (N, 6, 96, 96)
        for block in self.face_encoder_blocks:
            h = block(h)
            feats.append(h)
        for block in self.face_decoder_blocks:
            x = block(x)
            x = torch.cat((x, feats.pop()), dim=1)  # skip from the encoder stage of the same size
        out = self.output_block(x)  # (N, 3, 96, 96)
        return unfold_time(out, batch)

    def forward_rows(self, mel: torch.Tensor, face: torch.Tensor, first_row: int) -> torch.Tensor:
        """Rows ``first_row:`` of ``forward``'s per-frame output, (N, 3, 96 - first_row, 96), computing only what
        they depend on: the decoder's upsampling stages run on the rows below their receptive field's top.

        The same convolutions on a crop of the same tensors: on the CPU the rows equal ``forward``'s bit for bit
        (each output pixel sums the same products in the same order; ``tests/test_wav2lip.py`` checks fp32 and
        bf16); on a GPU, cuDNN may choose other algorithms for the smaller maps (float rounding). The dub
        asks for the rows its blend reads (``blend.first_row_read``): the feather mask starts at ~38% of the
        box, and the 48- and 96-pixel stages hold ~70% of the generator's work."""
        if first_row <= 0:
            return self.forward(mel, face)
        x = self.encode_audio(mel)
        feats = []
        h = face
        for block in self.face_encoder_blocks:
            h = block(h)
            feats.append(h)
        offset = 0  # the row of the full-size map that x's row 0 is
        for block, start in zip(self.face_decoder_blocks, _decoder_input_rows(self.face_decoder_blocks, first_row)):
            if start > offset:
                x, offset = x[:, :, start - offset:], start
            x = block(x)
            offset *= _upsampling(block)
            x = torch.cat((x, feats.pop()[:, :, offset:]), dim=1)
        # the output block's 3x3 convolution reads one row above its first output row
        out = self.output_block(x[:, :, first_row - 1 - offset:])
        return out[:, :, 1:]


def _upsampling(stage: nn.Sequential) -> int:
    """2 for a decoder stage that opens with a stride-2 transposed convolution (96 <- 48 <- ... <- 6), else 1."""
    conv = stage[0].conv_block[0]
    return 2 if isinstance(conv, nn.ConvTranspose2d) and conv.stride[0] == 2 else 1


def _decoder_input_rows(stages: nn.ModuleList, first_row: int) -> list[int]:
    """The first row of each decoder stage's input that output rows ``first_row:`` depend on.

    Walks back from the output block (a 3x3 conv: one row above). A stride-2 stage (transposed conv, padding 1,
    output padding 1, then ``r`` residual 3x3 convs) makes output row ``2i`` from input row ``i`` alone and each
    residual conv reads one row higher, so rows ``n:`` of its output need rows ``(n - r) // 2:`` of its input;
    a stage that needs all its input rows, and every stage before it, runs whole (0)."""
    rows, need = [], first_row - 1
    for stage in reversed(stages):
        if _upsampling(stage) == 2 and need > 0:
            need = max(0, (need - (len(stage) - 1)) // 2)
        else:
            need = 0
        rows.append(need)
    return rows[::-1]
