"""Deterministic fake MuseTalk 1.5 weights in the released layout (parity tests; no download).

The same files are written by the scratch script that ran the upstream code (tests/data/musetalk/README.md), so
the reference arrays there and our forward pass see identical weights.

Layout written by :func:`write_fake_release` under ``root`` (upstream's ``download_weights.sh`` layout)::

    musetalkV15/musetalk.json      the UNet2DConditionModel config (released values, or a smaller one)
    musetalkV15/unet.pth           plain state dict, torch.save (as upstream's unet.pth)
    sd-vae/config.json             stabilityai/sd-vae-ft-mse's config
    sd-vae/diffusion_pytorch_model.bin
    whisper/config.json            openai/whisper-tiny's config (transformers' WhisperConfig)
    whisper/preprocessor_config.json
    whisper/pytorch_model.bin      WhisperModel state dict

Recipe (RECIPE_VERSION = 1), per ``(key, shape)`` of a key list (tests/data/musetalk/*_keys.json, recorded from the
model classes): ``n = torch.randn(shape, generator=torch.Generator().manual_seed(crc32(key)))`` (float32), then
``n / sqrt(prod(shape[1:]))`` for weights of 2+ dims (conv, linear, embeddings), ``1 + 0.05 n`` for 1-dim
``*.weight`` (norm scales), ``0.05 n`` otherwise (biases). Moderate values keep every activation finite and
meaningful through the full-size UNet. Needs only torch; the configs are the published files' values.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch

RECIPE_VERSION = 1
DATA = Path(__file__).resolve().parent / "data" / "musetalk"

# TMElyralab/MuseTalk on Hugging Face, musetalkV15/musetalk.json (the values it publishes)
UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

# a small UNet of the same block types and attention widths (cross-attention on 384-wide audio): the fast parity
# test; the released size has its own (slow) reference
SMALL_UNET_CONFIG = {**UNET_CONFIG, "block_out_channels": [32, 64, 64, 64], "layers_per_block": 1,
                     "attention_head_dim": 8, "norm_num_groups": 8}

# stabilityai/sd-vae-ft-mse, config.json
VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.4.2",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# openai/whisper-tiny, config.json (the fields that shape the encoder; the rest are transformers' defaults)
WHISPER_CONFIG = {
    "architectures": ["WhisperForConditionalGeneration"],
    "model_type": "whisper",
    "activation_function": "gelu",
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "decoder_layers": 4,
    "decoder_attention_heads": 6,
    "decoder_ffn_dim": 1536,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "vocab_size": 51865,
    "scale_embedding": False,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "torch_dtype": "float32",
}

# openai/whisper-tiny, preprocessor_config.json (its mel_filters array left out: transformers recomputes it)
WHISPER_PREPROCESSOR = {
    "chunk_length": 30,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 80,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "WhisperProcessor",
    "return_attention_mask": False,
    "sampling_rate": 16000,
}


def fill(key: str, shape) -> torch.Tensor:
    """The recipe's float32 tensor for one state-dict entry (see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")) & 0xFFFFFFFF)
    n = torch.randn(shape, generator=g, dtype=torch.float32)
    if len(shape) >= 2:
        return n / math.sqrt(math.prod(shape[1:]))
    if key.endswith(".weight"):
        return 1.0 + 0.05 * n
    return 0.05 * n


def fake_state_dict(keys: list) -> dict[str, torch.Tensor]:
    """``{key: fill(key, shape)}`` for a key list of ``[key, shape]`` pairs, in its order."""
    return {k: fill(k, s) for k, s in keys}


def load_keys(name: str) -> list:
    """A recorded key list of tests/data/musetalk: ``unet`` (released config), ``unet_small``, ``vae``,
    ``whisper``."""
    return json.loads((DATA / f"{name}_keys.json").read_text())


def write_fake_release(root: Path, small: bool = False, keys: dict[str, list] | None = None) -> Path:
    """Write the fake release under ``root`` (see the module docstring); ``small`` uses SMALL_UNET_CONFIG.

    ``keys`` overrides the stored key lists (``{"unet": ..., "vae": ..., "whisper": ...}``; the scratch script
    passes the ones it recorded from upstream's classes). Returns ``root``.
    """
    root = Path(root)
    keys = keys or {"unet": load_keys("unet_small" if small else "unet"), "vae": load_keys("vae"),
                    "whisper": load_keys("whisper")}
    (root / "musetalkV15").mkdir(parents=True, exist_ok=True)
    (root / "sd-vae").mkdir(parents=True, exist_ok=True)
    (root / "whisper").mkdir(parents=True, exist_ok=True)
    config = SMALL_UNET_CONFIG if small else UNET_CONFIG
    (root / "musetalkV15" / "musetalk.json").write_text(json.dumps(config, indent=2))
    torch.save(fake_state_dict(keys["unet"]), root / "musetalkV15" / "unet.pth")
    (root / "sd-vae" / "config.json").write_text(json.dumps(VAE_CONFIG, indent=2))
    torch.save(fake_state_dict(keys["vae"]), root / "sd-vae" / "diffusion_pytorch_model.bin")
    (root / "whisper" / "config.json").write_text(json.dumps(WHISPER_CONFIG, indent=2))
    (root / "whisper" / "preprocessor_config.json").write_text(json.dumps(WHISPER_PREPROCESSOR, indent=2))
    torch.save(fake_state_dict(keys["whisper"]), root / "whisper" / "pytorch_model.bin")
    return root


def face_input(n: int = 2, size: int = 256) -> "list":
    """``n`` deterministic BGR uint8 faces (size, size, 3): smooth gradients and a dark 'mouth' ellipse (numpy
    only, so the scratch script and the tests draw the same pixels)."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    faces = []
    for i in range(n):
        b = 120 + 80 * np.sin(2 * np.pi * (xx + 0.1 * i))
        g = 100 + 60 * np.cos(2 * np.pi * (yy * 1.5 - 0.2 * i))
        r = 150 + 50 * np.sin(2 * np.pi * (xx + yy) + i)
        img = np.stack([b, g, r], axis=-1)
        mouth = ((xx - 0.5) / 0.18) ** 2 + ((yy - (0.72 + 0.02 * i)) / 0.06) ** 2 <= 1.0
        img[mouth] = (40, 30, 90)
        faces.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return faces


def audio_input(seconds: float = 1.0, sr: int = 16000):
    """Deterministic float32 mono audio: a vowel-like harmonic tone with a 4 Hz syllable envelope."""
    import numpy as np

    t = np.arange(int(round(seconds * sr))) / sr
    f0 = 140.0
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    env = 0.5 * (1 - np.cos(2 * np.pi * 4.0 * t))
    return (0.2 * wave * env).astype(np.float32)
