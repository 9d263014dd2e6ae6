"""Generator registry: every architecture shares one input/output contract.

Contract (all archs):
    forward(mel, face) -> out
    mel:  (B, 1, 80, 16)         or (B, T, 1, 80, 16)
    face: (B, 6, 96, 96)         or (B, 6, T, 96, 96)   BGR in [0, 1]; channels 0-2 the target with
                                                          rows 48: zeroed, channels 3-5 the reference
    out:  (B, 3, 96, 96)         or (B, 3, T, 96, 96)   BGR in [0, 1] (sigmoid)
Every generator instance carries ``arch`` (registry name) and ``config`` (a dict of its constructor
arguments) so a checkpoint can rebuild it alone.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class ArchSpec:
    name: str
    module: str  # lipsync_cli.models.<module>
    cls: str  # class name in that module; constructed as cls(**config)
    description: str
    default_config: dict = field(default_factory=dict)


ARCHS: dict[str, ArchSpec] = {
    "wav2lip": ArchSpec(
        "wav2lip", "wav2lip", "Wav2Lip",
        "Wav2Lip (Prajwal et al. 2020): the official generator; loads wav2lip.pth / wav2lip_gan.pth as is",
    ),
    "attn_wav2lip": ArchSpec(
        "attn_wav2lip", "attn_wav2lip", "AttnWav2Lip",
        "AttnWav2Lip (Wang et al. 2022): Wav2Lip with residual CBAM after every face encoder/decoder block",
    ),
    "lpips_attn_wav2lip": ArchSpec(
        "lpips_attn_wav2lip", "lpips_attn_wav2lip", "LPIPSAttnWav2Lip",
        "LPIPS-AttnWav2Lip (Chen et al. 2023): residual-CBAM U-Net with 9 FFC+AdaIN audio alignment modules",
    ),
}


# generators ``lipsync dub --arch`` runs that are not of this contract and not trainable here: name -> description
# (MuseTalk 1.5: lipsync_cli.models.musetalk, wired into the dub engine by lipsync_cli.musetalk_dub)
INFERENCE_ONLY: dict[str, str] = {
    "musetalk": "MuseTalk 1.5 (Zhang et al. 2024): one-step latent inpainting of a 256 px face, a Stable Diffusion "
                "UNet (849.95 M) on the sd-vae-ft-mse VAE, driven by whisper-tiny; dub only (not trainable here), "
                "weights: lipsync weights download musetalk, needs the musetalk extra",
}
MUSETALK_UNET_PARAMETERS = 849_947_844  # the released unet.pth (tests/test_musetalk.py checks the key list)


def arch_names() -> list[str]:
    return list(ARCHS)


def build_generator(arch: str, config: dict | None = None) -> nn.Module:
    """Instantiate a generator by registry name with ``config`` overriding its defaults."""
    from lipsync_cli.errors import BadOption

    if arch not in ARCHS:
        raise BadOption(f"unknown architecture {arch!r}", f"choose one of: {', '.join(ARCHS)}")
    spec = ARCHS[arch]
    cls = getattr(importlib.import_module(f"lipsync_cli.models.{spec.module}"), spec.cls)
    cfg = {**spec.default_config, **(config or {})}
    model = cls(**cfg)
    model.arch = arch
    model.config = dict(getattr(model, "config", None) or cfg)
    return model
