"""Safe checkpoint loading, kind detection from keys, and our self-describing checkpoint format.

Never unpickles code: every load goes through ``torch.load(..., weights_only=True)`` or safetensors, so a
file whose pickle would import or call anything is refused before any of it runs.

Our format (a dict saved with torch.save, atomically):
    {"format": "lipsync_cli", "format_version": 1, "kind": <KIND_NAMES key>, "arch": <registry name>,
     "config": {...}, "state_dict": {...}, and for training checkpoints: "optimizer", "scaler", "step",
     "epoch", "train_config", "metrics", "rng", ...}
Store only plain containers (dict/list/str/int/float/bool/None) and tensors in it: anything else (a
dataclass, a numpy array) would need code to unpickle and would be refused on load.
Exported inference files hold only kind/arch/config/state_dict; as ``.safetensors`` the tensors are the
file's tensors and ``format``, ``format_version``, ``kind``, ``arch`` and ``config`` (JSON) its metadata.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
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
    """``torch.load`` (or safetensors) a file safely onto the CPU.

    Raises InputNotFound for a missing file, CheckpointError for a corrupt one or one whose pickle would
    run code (nothing of it runs: the restricted unpickler stops at the first non-allowlisted global).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        return _load_safetensors(path)
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # neither torch's zip format nor a pickle (protocol >= 2)
        raise CheckpointError(f"cannot read checkpoint {path}: it is not a PyTorch or safetensors weight file",
                              "pass the weight file itself (.pth / .pt / .safetensors)")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the restricted unpickler decides anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it needs arbitrary code to unpickle "
            f"({str(err).splitlines()[0][:160]})",
            "only load weight files you trust; re-save it as a plain state dict "
            "(then `lipsync weights import`)",
        ) from None
    except Exception as err:  # junk makes the unpickler fail in many ways: all mean "corrupt"
        raise CheckpointError(
            f"cannot read checkpoint {path}: {str(err).splitlines()[0][:200]}",
            "the file is corrupt or truncated; download it again (`lipsync weights verify` checks it)",
        ) from None


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length and then a JSON ``{``."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= path.stat().st_size - 8


def _load_safetensors(path: Path) -> dict:
    """A safetensors file as a plain state dict, or as our format when its metadata says so."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}  # safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read safetensors file {path}: {str(err).splitlines()[0][:200]}",
                              "the file is corrupt or truncated") from None
    if meta.get("format") != FORMAT_NAME:
        return sd
    try:
        config = json.loads(meta.get("config") or "{}")
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its config metadata is not valid JSON") from None
    return {
        "format": FORMAT_NAME,
        "format_version": int(meta.get("format_version") or FORMAT_VERSION),
        "kind": meta.get("kind") or meta.get("arch"),
        "arch": meta.get("arch") or None,
        "config": config,
        "state_dict": sd,
    }


def unwrap_state_dict(obj: Any) -> dict:
    """The tensor dict inside any supported container, with DataParallel ``module.`` prefixes removed."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def detect_kind(obj: Any) -> str:
    """What a loaded file is, from its container and keys (see KIND_NAMES)."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
        named = obj.get("kind") or obj.get("arch")
        if named:
            return str(named)
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
    if has("face_encoder_stages.") and has("output_block.") and has("align_modules."):
        return "lpips_attn_wav2lip"  # U-Net stages + FFC/AdaIN audio alignment (models/lpips_attn_wav2lip.py)
    if has("face_encoder_blocks.") and has("face_decoder_blocks.") and has("output_block."):
        return "attn_wav2lip" if any(".cbam." in k or ".attention." in k for k in keys) else "wav2lip"
    return "unknown"


def expect_kind(path: str | os.PathLike, obj: Any, expected: tuple[str, ...]) -> str:
    """The kind of ``obj``; CheckpointMismatch naming expected vs found when it is not in ``expected``."""
    kind = detect_kind(obj)
    if kind not in expected:
        want = " or ".join(KIND_NAMES.get(k, k) for k in expected)
        found = KIND_NAMES.get(kind, kind)
        raise CheckpointMismatch(
            f"{path} holds the wrong kind of weights: found {found}, this needs {want}",
            "pass the right file (see `lipsync weights list`)",
        )
    return kind


def _mismatch(path, arch: str, err: RuntimeError) -> CheckpointMismatch:
    lines = str(err).splitlines()
    return CheckpointMismatch(f"{path} does not fit the {arch} architecture: "
                              f"{(lines[1] if len(lines) > 1 else lines[0])[:200]}")


def build_loaded(arch: str, config: dict, sd: dict, path: str | os.PathLike = "<checkpoint>"):
    """A generator of ``arch`` holding exactly the tensors of ``sd`` (strict), in float32, on the CPU.

    The model is first built on the ``meta`` device and the weights assigned, which skips the random
    initialisation of ~36 M parameters; models that cannot be built that way are built normally.
    """
    import torch

    from lipsync_cli.models import build_generator

    try:
        with torch.device("meta"):
            model = build_generator(arch, config)
    except Exception:  # an init that needs real tensors: fall back to a normal build
        model = None
    if model is not None:
        try:
            model.load_state_dict(sd, strict=True, assign=True)
        except RuntimeError as err:
            raise _mismatch(path, arch, err) from None
        if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            return model.float()
    model = build_generator(arch, config)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise _mismatch(path, arch, err) from None
    return model


def load_generator(path: str | os.PathLike, arch: str | None = None, device: str = "cpu"):
    """Rebuild a generator from an upstream Wav2Lip file or one of ours (training, exported ``.pt`` or
    ``.safetensors``); eval mode, on ``device``.

    Ours carry ``arch`` and ``config``, so ``arch`` is only needed to start a different architecture from
    upstream Wav2Lip weights (``arch="attn_wav2lip"``: the shared layers load, the attention stays at init).
    """
    from lipsync_cli.models import build_generator

    obj = load_file(path)
    kind = expect_kind(path, obj, GENERATOR_KINDS)
    config = dict(obj.get("config") or {}) if is_ours(obj) else {}
    if arch is not None and arch != kind and not (arch == "attn_wav2lip" and kind == "wav2lip"):
        raise CheckpointMismatch(f"{path} holds a {KIND_NAMES[kind]}, but --arch {arch} was given",
                                 f"drop --arch or pass a {arch} checkpoint")
    sd = unwrap_state_dict(obj)
    if (arch or kind) == kind:
        model = build_loaded(kind, config, sd, path)
    else:  # a different architecture initialised from the layers it shares with this file
        model = build_generator(arch, config)
        try:
            model.load_state_dict(sd, strict=False)
        except RuntimeError as err:
            raise _mismatch(path, arch, err) from None
    model.mel_lead = generator_mel_lead(obj)
    return model.to(device).eval()


LEGACY_MEL_LEAD = 2  # our checkpoints from before the lead was stored were all trained with GeneratorDataset's 2


def generator_mel_lead(obj: Any) -> int:
    """The audio/video lead (video frames) a generator file was trained with, for ``audio.mel_start``.

    Ours store it as ``mel_lead``; ours from the first release carry none and were trained with 2; upstream
    Wav2Lip files keep Wav2Lip's inference indexing (0)."""
    if not is_ours(obj):
        return 0
    lead = obj.get("mel_lead")
    return LEGACY_MEL_LEAD if lead is None else int(lead)


def load_network(path: str | os.PathLike, net, kind: str, hint: str):
    """Load a file of ``kind`` (see KIND_NAMES) strictly into ``net``; a file of another kind, or whose tensors do
    not fit, raises CheckpointMismatch with ``hint``. Returns ``net`` (mode and device unchanged)."""
    obj = load_file(path)
    expect_kind(path, obj, (kind,))
    try:
        net.load_state_dict(unwrap_state_dict(obj), strict=True)
    except RuntimeError as err:
        lines = str(err).splitlines()
        detail = lines[1] if len(lines) > 1 else str(err)
        raise CheckpointMismatch(f"{path} does not fit the {KIND_NAMES[kind]}: {detail.strip()[:200]}", hint) from None
    return net


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, then rename: readers never see half a file."""
    import torch

    from lipsync_cli.files import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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


def is_ours(obj: Any) -> bool:
    """True for a dict in our self-describing format."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT_NAME


def _plain_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def to_ours(obj: Any, path: str | os.PathLike = "<checkpoint>", arch: str | None = None) -> dict:
    """Any supported loaded file as our format dict (ours pass through unchanged).

    Upstream files get ``kind``/``arch`` from their keys (``arch`` must agree when given), an empty config,
    the unwrapped state dict, and ``step``/``epoch`` from ``global_step``/``global_epoch``. Generators are
    rebuilt and loaded strictly, so a file that does not fit its architecture fails here, not later.
    Raises CheckpointError for a file nothing recognises, CheckpointMismatch for a wrong ``arch``.
    """
    if is_ours(obj):
        kind = detect_kind(obj)
        if arch is not None and arch != (obj.get("arch") or kind):
            raise CheckpointMismatch(
                f"{path} holds a {KIND_NAMES.get(kind, kind)}, but --arch {arch} was given",
                "drop --arch: our checkpoints name their architecture")
        return obj
    kind = detect_kind(obj)
    if kind == "unknown":
        raise CheckpointError(f"cannot tell what {path} is: its keys match no known model",
                              "supported: " + ", ".join(v for k, v in KIND_NAMES.items() if k != "unknown"))
    if arch is not None and arch != kind:
        raise CheckpointMismatch(f"{path} is a {KIND_NAMES.get(kind, kind)}, but --arch {arch} was given",
                                 f"drop --arch (detected: {kind})")
    sd = unwrap_state_dict(obj)
    extra = {}
    if isinstance(obj, dict):
        extra = {"step": _plain_int(obj.get("global_step")), "epoch": _plain_int(obj.get("global_epoch"))}
        extra = {k: v for k, v in extra.items() if v is not None}
    if kind in GENERATOR_KINDS:
        return make_checkpoint(build_loaded(kind, {}, sd, path), **extra)
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": kind, "arch": kind, "config": {},
            "state_dict": {k: (v.detach().cpu() if hasattr(v, "detach") else v) for k, v in sd.items()},
            **extra}


def load_checkpoint(path: str | os.PathLike, arch: str | None = None) -> dict:
    """Load any supported file (upstream, ours, exported ``.pt``/``.safetensors``) as our format dict."""
    return to_ours(load_file(path), path, arch)


def inference_only(ckpt: dict) -> dict:
    """Strip a checkpoint of ours to what inference needs: format, kind, arch, config, state_dict."""
    keep = ("format", "format_version", "kind", "arch", "config", "state_dict")
    return {k: ckpt[k] for k in keep if k in ckpt}


def save_safetensors(ckpt: dict, path: str | os.PathLike) -> None:
    """Write ``ckpt`` (ours) as safetensors: tensors as the body, kind/arch/config (JSON) as metadata.

    Atomic (temporary file + rename).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt["state_dict"].items()}
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(ckpt.get("format_version", FORMAT_VERSION)),
        "kind": str(ckpt.get("kind") or ckpt.get("arch") or ""),
        "arch": str(ckpt.get("arch") or ""),
        "config": json.dumps(ckpt.get("config") or {}, sort_keys=True),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> Path:
    """Save a checkpoint of ours atomically: ``.safetensors`` (inference-only) by suffix, else torch.save."""
    path = Path(path)
    if path.suffix == ".safetensors":
        save_safetensors(ckpt, path)
    else:
        atomic_save(ckpt, path)
    return path


def import_checkpoint(src: str | os.PathLike, out: str | os.PathLike, arch: str | None = None) -> dict:
    """Convert an upstream file (Wav2Lip, expert, discriminator, S3FD, syncnet_v2) into ours at ``out``.

    The upstream optimizer state is dropped (it belongs to their training run); step/epoch are kept.
    Returns the saved checkpoint dict.
    """
    ckpt = load_checkpoint(src, arch)
    if Path(out).suffix == ".safetensors":
        ckpt = inference_only(ckpt)
    save_checkpoint(ckpt, out)
    return ckpt


def export_checkpoint(src: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the inference-only part of any supported checkpoint (weights + kind/arch/config) to ``out``.

    ``out`` ending in ``.safetensors`` gives a safetensors file with the config in its metadata; anything
    else a small torch file of ours. Returns the saved dict.
    """
    ckpt = inference_only(load_checkpoint(src))
    save_checkpoint(ckpt, out)
    return ckpt
