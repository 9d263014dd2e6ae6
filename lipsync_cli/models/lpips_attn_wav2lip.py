"""LPIPS-AttnWav2Lip generator (Chen et al., Speech Communication 2023, section 3 and 4.3).

    face (N, 6, 96, 96) -> face encoder, residual CBAM after every conv layer
                        -> 16@96, 32@48, 64@24, 128@12, 256@6                    (the 6x6x256 bottleneck)
    mel  (N, 1, 80, 16) -> audio encoder -> audio map (N, 256, 6, 6)             (brought to the same size)
    9 semantic alignment modules, each  x <- x + AdaIN(FFC(x), audio)           (audio injected 9 times)
    decoder 6 -> 12 -> 24 -> 48 -> 96 with U-Net skips and residual CBAM, conv + sigmoid -> (N, 3, 96, 96)

Where the paper is silent the choices are constructor arguments (stored in ``model.config``):

* ``reduction=16, spatial_kernel=7, min_hidden=4``: CBAM's own defaults (Woo et al.), as in AttnWav2Lip, which
  this paper cites for its CBAM; the floor keeps the 16-channel stage from a 1-unit bottleneck.
* ``cbam_placement="layer"``: "residual CBAM blocks between every two convolution layers" (section 3.1) read
  literally, one after every conv layer of the encoder and decoder; ``"stage"`` puts one after each resolution
  stage only (AttnWav2Lip's placement).
* ``ffc_ratio=0.75``: LaMa's global-channel ratio for its FFC residual blocks, the structure the paper adapts.
* ``ffc_lfu=False``: LaMa's released configs disable FFC's local Fourier unit; with 6x6 maps its 3x3 tiles add
  little. ``True`` enables it.
* ``adain_source="stats"``: eq. 2 literally, AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y) with y
  the 6x6x256 audio map and sigma, mu its per-channel std and mean over H, W; this is why the audio encoder's
  output is made the size of the face features (section 4.3). It adds no parameters: each of the 9 modules
  receives the same audio statistics and differs by its FFC. ``"linear"`` instead maps the spatially pooled
  audio map through a per-module linear layer to (1 + gamma, beta), StyleGAN-style, zero-initialised so it
  starts as plain instance normalisation.
* ``n_align=9`` modules (section 4.3), each residual: the paper replaces the second FFC of LaMa's two-layer
  FFC residual block with AdaIN, so the module is x + AdaIN(FFC(x)).
"""

from __future__ import annotations

import torch
from torch import nn

from lipsync_cli.checkpoint_kinds import KindSignature, register_kind
from lipsync_cli.models.blocks import Conv2d, Conv2dTranspose
from lipsync_cli.models.cbam import (
    DEFAULT_MIN_HIDDEN,
    DEFAULT_REDUCTION,
    DEFAULT_SPATIAL_KERNEL,
    ResidualCBAM,
)
from lipsync_cli.models.ffc import FFC, adain, channel_stats
from lipsync_cli.models.wav2lip import fold_time, unfold_time

BOTTLENECK_CHANNELS = 256  # face features at the bottleneck: 6x6x256 (section 4.3)
ADAIN_SOURCES = ("stats", "linear")
CBAM_PLACEMENTS = ("layer", "stage")


def _res(c: int) -> Conv2d:
    return Conv2d(c, c, 3, 1, 1, residual=True)


# U-Net stages + FFC/AdaIN audio alignment (checkpoint.detect_kind)
register_kind(KindSignature(
    "lpips_attn_wav2lip", "LPIPS-AttnWav2Lip generator",
    requires=("face_encoder_stages.", "output_block.", "align_modules."), generator=True))


class AttentiveStage(nn.Module):
    """Conv layers with a residual CBAM after each (placement "layer") or after the last one ("stage").

    Keys: ``layers.i.*`` and ``attn.j.cbam.*``.
    """

    def __init__(self, layers: list[nn.Module], channels: list[int], placement: str, cbam_kwargs: dict):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.attn_after = list(range(len(layers))) if placement == "layer" else [len(layers) - 1]
        self.attn = nn.ModuleList([nn.ModuleDict({"cbam": ResidualCBAM(channels[i], **cbam_kwargs)})
                                   for i in self.attn_after])

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Return the stage output and {layer index: spatial attention map (N, 1, H, W)}."""
        maps: dict[int, torch.Tensor] = {}
        slots = dict(zip(self.attn_after, self.attn, strict=True))
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in slots:
                x, maps[i] = slots[i]["cbam"].forward_with_map(x)
        return x, maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_maps(x)[0]


class SemanticAlignment(nn.Module):
    """x (N, C, 6, 6), audio map a (N, C, 6, 6) -> x + AdaIN(FFC(x), a); options: see the module docstring."""

    def __init__(self, channels: int, ffc_ratio: float, ffc_lfu: bool, adain_source: str, eps: float = 1e-5):
        super().__init__()
        self.ffc = FFC(channels, channels, 3, ffc_ratio, ffc_lfu)
        self.adain_source = adain_source
        self.eps = eps
        if adain_source == "linear":
            self.style = nn.Linear(channels, 2 * channels)
            nn.init.zeros_(self.style.weight)
            nn.init.zeros_(self.style.bias)

    def audio_affine(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (N, C), that AdaIN applies, derived from the audio map (N, C, H, W)."""
        if self.adain_source == "stats":
            return channel_stats(audio, self.eps)
        gamma, beta = self.style(audio.mean(dim=(2, 3))).chunk(2, dim=1)  # (N, C) each
        return 1.0 + gamma, beta

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        scale, shift = self.audio_affine(audio)
        return x + adain(self.ffc(x), scale, shift, self.eps)


class LPIPSAttnWav2Lip(nn.Module):
    """LPIPS-AttnWav2Lip generator; see the module docstring for the layout and the meaning of each option."""

    def __init__(self, reduction: int = DEFAULT_REDUCTION, spatial_kernel: int = DEFAULT_SPATIAL_KERNEL,
                 min_hidden: int = DEFAULT_MIN_HIDDEN, cbam_placement: str = "layer", n_align: int = 9,
                 ffc_ratio: float = 0.75, ffc_lfu: bool = False, adain_source: str = "stats"):
        super().__init__()
        if adain_source not in ADAIN_SOURCES:
            raise ValueError(f"adain_source must be one of {ADAIN_SOURCES}, got {adain_source!r}")
        if cbam_placement not in CBAM_PLACEMENTS:
            raise ValueError(f"cbam_placement must be one of {CBAM_PLACEMENTS}, got {cbam_placement!r}")
        if n_align < 1:
            raise ValueError(f"n_align must be >= 1, got {n_align}")
        cb = {"reduction": reduction, "spatial_kernel": spatial_kernel, "min_hidden": min_hidden}

        def stage(layers: list[nn.Module], channels: list[int]) -> AttentiveStage:
            return AttentiveStage(layers, channels, cbam_placement, cb)

        c = BOTTLENECK_CHANNELS
        self.face_encoder_stages = nn.ModuleList([
            stage([Conv2d(6, 16, 7, 1, 3)], [16]),  # (N, 16, 96, 96)
            stage([Conv2d(16, 32, 3, 2, 1), _res(32), _res(32)], [32] * 3),  # (N, 32, 48, 48)
            stage([Conv2d(32, 64, 3, 2, 1), _res(64), _res(64), _res(64)], [64] * 4),  # (N, 64, 24, 24)
            stage([Conv2d(64, 128, 3, 2, 1), _res(128), _res(128)], [128] * 3),  # (N, 128, 12, 12)
            stage([Conv2d(128, c, 3, 2, 1), _res(c), _res(c)], [c] * 3),  # (N, 256, 6, 6)
        ])
        self.audio_encoder = nn.Sequential(
            Conv2d(1, 32, 3, 1, 1), _res(32), _res(32),  # (N, 32, 80, 16)
            Conv2d(32, 64, 3, (3, 1), 1), _res(64), _res(64),  # (N, 64, 27, 16)
            Conv2d(64, 128, 3, 3, 1), _res(128), _res(128),  # (N, 128, 9, 6)
            Conv2d(128, c, 3, (3, 2), 1), _res(c),  # (N, 256, 3, 3)
            Conv2dTranspose(c, c, 3, 2, 1, output_padding=1), _res(c),  # (N, 256, 6, 6)
        )
        self.align_modules = nn.ModuleList(
            [SemanticAlignment(c, ffc_ratio, ffc_lfu, adain_source) for _ in range(n_align)])
        # decoder input = previous output + same-size encoder skip (U-Net), like Wav2Lip's last 4 blocks
        self.face_decoder_stages = nn.ModuleList([
            stage([Conv2dTranspose(2 * c, 384, 3, 2, 1, output_padding=1), _res(384), _res(384)],
                  [384] * 3),  # (N, 384, 12, 12)
            stage([Conv2dTranspose(384 + 128, 256, 3, 2, 1, output_padding=1), _res(256), _res(256)],
                  [256] * 3),  # (N, 256, 24, 24)
            stage([Conv2dTranspose(256 + 64, 128, 3, 2, 1, output_padding=1), _res(128), _res(128)],
                  [128] * 3),  # (N, 128, 48, 48)
            stage([Conv2dTranspose(128 + 32, 64, 3, 2, 1, output_padding=1), _res(64), _res(64)],
                  [64] * 3),  # (N, 64, 96, 96)
        ])
        self.output_block = nn.Sequential(Conv2d(64 + 16, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0),
                                          nn.Sigmoid())
        self.arch = "lpips_attn_wav2lip"
        self.config = {**cb, "cbam_placement": cbam_placement, "n_align": n_align, "ffc_ratio": ffc_ratio,
                       "ffc_lfu": ffc_lfu, "adain_source": adain_source}
        self.record_attention = False
        self.attention_maps: dict[str, torch.Tensor] = {}

    def attention_names(self) -> list[str]:
        """Names of the attention points in forward order: "enc<stage>.<layer>", "dec<stage>.<layer>"."""
        return ([f"enc{s}.{i}" for s, st in enumerate(self.face_encoder_stages) for i in st.attn_after]
                + [f"dec{s}.{i}" for s, st in enumerate(self.face_decoder_stages) for i in st.attn_after])

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, 1, 80, 16) mel windows -> (N, 256, 6, 6) audio map."""
        return self.audio_encoder(mel)

    def _keep(self, prefix: str, maps: dict[int, torch.Tensor]) -> None:
        if self.record_attention:
            self.attention_maps.update({f"{prefix}.{i}": m.detach() for i, m in maps.items()})

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        mel, face, batch = fold_time(mel, face)
        if self.record_attention:
            self.attention_maps = {}
        audio = self.encode_audio(mel)  # (N, 256, 6, 6)
        feats = []
        h = face  # (N, 6, 96, 96)
        for s, st in enumerate(self.face_encoder_stages):
            h, maps = st.forward_with_maps(h)
            self._keep(f"enc{s}", maps)
            feats.append(h)
        x = h  # (N, 256, 6, 6)
        for module in self.align_modules:
            x = module(x, audio)
        for s, st in enumerate(self.face_decoder_stages):
            x = torch.cat((x, feats.pop()), dim=1)  # skip from the encoder stage of the same size
            x, maps = st.forward_with_maps(x)
            self._keep(f"dec{s}", maps)
        x = torch.cat((x, feats.pop()), dim=1)  # (N, 80, 96, 96)
        out = self.output_block(x)  # (N, 3, 96, 96)
        return unfold_time(out, batch)
