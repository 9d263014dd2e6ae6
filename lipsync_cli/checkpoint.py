"""Safe checkpoint loading, kind detection from keys, and our self-describing checkpoint format.

Never unpickles code: every load goes through ``torch.load(..., weights_only=True)``.

Our format (a dict saved with torch.save):
    {"format": "lipsync_cli", "format_version": 1, "arch": <registry name>, "config": {...},
     "state_dict": {...}, and for training checkpoints: "optimizer", "scaler", "step", "epoch",
     "train_config", "metrics", "rng", ...}
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from lipsync_cli.errors import CheckpointError, CheckpointMismatch, InputNotFound

FORMAT_NAME = "lipsync_cli"
FORMAT_VERSION = 1

# Human names of the kinds a weight file can be.
KIND_NAMES = {
    "wav2lip": "Wav2Lip generator",
    "attn_wav2lip": "AttnWav2Lip generator",
    "lpips_attn_wav2lip": "LPIPS-AttnWav2Lip generator",
    "syncnet_color": "SyncNet lip-sync expert (lipsync_expert.pth)",
    "disc_qual": "Wav2Lip visual-quality discriminator",
    "s3fd": "S3FD face detector",
    "syncnet_v2": "SyncNet v2 evaluation model (syncnet_v2.model)",
    "unknown": "unrecognised file",
}
GENERATOR_KINDS = ("wav2lip", "attn_wav2lip", "lpips_attn_wav2lip")


def load_file(path: str | os.PathLike) -> Any:
    """``torch.load`` a file safely onto the CPU; raise a domain error for missing, corrupt or unsafe files."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it needs arbitrary code to unpickle ({str(err).splitlines()[0][:160]})",
            "only load weight files you trust; re-save it as a plain state dict or use `lipsync weights import`",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {str(err).splitlines()[0][:200]}",
            "the file is corrupt or truncated; download it again (`lipsync weights verify` checks it)",
        ) from None


def unwrap_state_dict(obj: Any) -> dict:
    """The tensor dict inside any supported container, with DataParallel ``module.`` prefixes removed."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def detect_kind(obj: Any) -> str:
    """What a loaded file is, from its container and keys (see KIND_NAMES)."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
        return str(obj.get("kind") or obj.get("arch") or "unknown")
    try:
        sd = unwrap_state_dict(obj)
    except CheckpointError:
        return "unknown"
    keys = set(sd)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if "conv1_1.weight" in keys and has("conv3_3_norm_mbox_conf"):
        return "s3fd"
    if has("netcnnaud.") and has("netcnnlip."):
        return "syncnet_v2"
    if has("face_encoder.") and has("audio_encoder.") and not has("face_decoder_blocks."):
        return "syncnet_color"
    if has("face_encoder_blocks.") and has("binary_pred."):
        return "disc_qual"
    if has("face_encoder_blocks.") and has("face_decoder_blocks.") and has("output_block."):
        return "attn_wav2lip" if any(".cbam." in k or ".attention." in k for k in keys) else "wav2lip"
    return "unknown"


def expect_kind(path: str | os.PathLike, obj: Any, expected: tuple[str, ...]) -> str:
    """Return the kind of ``obj``; raise CheckpointMismatch naming expected vs found if it is not one of ``expected``."""
    kind = detect_kind(obj)
    if kind not in expected:
        want = " or ".join(KIND_NAMES.get(k, k) for k in expected)
        raise CheckpointMismatch(
            f"{path} is a {KIND_NAMES.get(kind, kind)}, but this needs a {want}",
            "pass the right file (see `lipsync weights list`)",
        )
    return kind


def load_generator(path: str | os.PathLike, arch: str | None = None, device: str = "cpu"):
    """Rebuild a generator from an upstream Wav2Lip file or one of ours; eval mode, on ``device``."""
    from lipsync_cli.models import build_generator

    obj = load_file(path)
    kind = expect_kind(path, obj, GENERATOR_KINDS)
    config = obj.get("config", {}) if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME else {}
    if arch is not None and arch != kind:
        if not (arch == "attn_wav2lip" and kind == "wav2lip"):
            raise CheckpointMismatch(f"{path} holds a {KIND_NAMES[kind]}, but --arch {arch} was given",
                                     f"drop --arch or pass a {arch} checkpoint")
    model = build_generator(arch or kind, config)
    sd = unwrap_state_dict(obj)
    strict = (arch or kind) == kind
    try:
        missing, unexpected = model.load_state_dict(sd, strict=strict)
    except RuntimeError as err:
        raise CheckpointMismatch(f"{path} does not fit the {arch or kind} architecture: "
                                 f"{str(err).splitlines()[1][:200] if len(str(err).splitlines()) > 1 else err}")
    return model.to(device).eval()


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, then rename: readers never see half a file."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_checkpoint(model, **extra: Any) -> dict:
    """Our self-describing checkpoint dict for a registry model (``model.arch``, ``model.config``)."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": getattr(model, "arch", None),
        "arch": getattr(model, "arch", None),
        "config": dict(getattr(model, "config", {}) or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
