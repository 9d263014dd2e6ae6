"""Our self-describing checkpoint format: rebuilding generators, saving, import and export.

Reading files safely and telling their kind is ``checkpoint_io`` (re-exported here): never unpickles code, and
each network registers what its state dict looks like (``checkpoint_kinds``).

Our format (a dict saved with torch.save, atomically):
    {"format": "lipsync_cli", "format_version": 1, "kind": <KIND_NAMES key>, "arch": <registry name>,
     "config": {...}, "state_dict": {...}, and for training checkpoints: "step", "epoch", "train_config",
     "metrics", ..., plus in a run's last.pt alone what resuming needs: "optimizers", "scalers", "rng", ...
     (``train.core.RESUME_KEYS``)}
Store only plain containers (dict/list/str/int/float/bool/None) and tensors in it: anything else (a
dataclass, a numpy array) would need code to unpickle and would be refused on load.
Exported inference files hold only kind/arch/config/state_dict; as ``.safetensors`` the tensors are the
file's tensors and ``format``, ``format_version``, ``kind``, ``arch`` and ``config`` (JSON) its metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lipsync_cli.checkpoint_io import (  # noqa: F401  re-exported: the loading half of the public API
    FORMAT_NAME,
    FORMAT_VERSION,
    KIND_NAMES,
    detect_kind,
    expect_kind,
    is_ours,
    load_file,
    load_network,
    unwrap_state_dict,
)
from lipsync_cli.checkpoint_kinds import GENERATOR_KINDS, generator_kinds  # noqa: F401  GENERATOR_KINDS re-exported
from lipsync_cli.errors import CheckpointError, CheckpointMismatch
from lipsync_cli.files import atomic_path


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


def load_generator(path: str | os.PathLike, arch: str | None = None, device: str = "cpu", *,
                   untrained: bool = False):
    """Rebuild a generator from an upstream Wav2Lip file or one of ours (training, exported ``.pt`` or
    ``.safetensors``); eval mode, on ``device``.

    Ours carry ``arch`` and ``config``, so ``arch`` is only needed to name what the file holds. A Wav2Lip file
    with ``arch="attn_wav2lip"`` would leave the attention layers at their initial values: that is refused
    (CheckpointMismatch naming the untrained layers and ``lipsync train generator --init``, which is how such a
    model is made), unless ``untrained`` (tests, and the start of a fine-tuning run): the shared layers load,
    the attention stays at init.
    """
    from lipsync_cli.models import build_generator

    obj = load_file(path, mmap=True)  # read-only here; the model's tensors are its pages until moved or fused
    kind = expect_kind(path, obj, generator_kinds())
    config = dict(obj.get("config") or {}) if is_ours(obj) else {}
    if arch is not None and arch != kind and not (arch == "attn_wav2lip" and kind == "wav2lip"):
        raise CheckpointMismatch(f"{path} holds a {KIND_NAMES[kind]}, but --arch {arch} was given",
                                 f"drop --arch or pass a {arch} checkpoint")
    sd = unwrap_state_dict(obj)
    if (arch or kind) == kind:
        model = build_loaded(kind, config, sd, path)
    else:  # a different architecture initialised from the layers it shares with this file
        model = build_generator(arch, config)
        if not untrained:
            raise _untrained(path, kind, arch, list(model.state_dict()), set(model.state_dict()) - set(sd))
        try:
            model.load_state_dict(sd, strict=False)
        except RuntimeError as err:
            raise _mismatch(path, arch, err) from None
    model.mel_lead = generator_mel_lead(obj)
    return model.to(device).eval()


def _untrained(path, kind: str, arch: str, keys: list[str], fresh: set[str]) -> CheckpointMismatch:
    """The refusal of a ``kind`` file run as ``arch``: of the model's ``keys``, the file lacks ``fresh``. They are
    named by the largest modules the file has nothing of (each layer of a list of them), in the model's order."""
    blocks: list[str] = []
    for key in keys:
        if key not in fresh:
            continue
        parts = key.split(".")
        for n in range(1, len(parts)):
            prefix = ".".join(parts[:n]) + "."
            if all(k in fresh for k in keys if k.startswith(prefix)):
                if parts[n].isdigit():  # a list of layers: name each layer
                    prefix = ".".join(parts[:n + 1]) + "."
                break
        else:
            prefix = key + "."
        if prefix[:-1] not in blocks:
            blocks.append(prefix[:-1])
    return CheckpointMismatch(
        f"{path} holds a {KIND_NAMES[kind]}: as --arch {arch} its {len(blocks)} attention layers "
        f"({blocks[0]} .. {blocks[-1]}) would run untrained, at their initial values",
        f"drop --arch to use it as {kind}, or fine-tune first: "
        f"lipsync train generator --arch {arch} --init {path}")


LEGACY_MEL_LEAD = 2  # our checkpoints from before the lead was stored were all trained with GeneratorDataset's 2


def generator_mel_lead(obj: Any) -> int:
    """The audio/video lead (video frames) a generator file was trained with, for ``audio.mel_start``.

    Any file that stores ``mel_lead`` (ours; ``lipsync train export`` files in the upstream layout) gives it;
    ours from the first release carry none and were trained with 2; upstream Wav2Lip files keep Wav2Lip's
    inference indexing (0)."""
    lead = obj.get("mel_lead") if isinstance(obj, dict) else None
    if lead is not None:
        return int(lead)
    return LEGACY_MEL_LEAD if is_ours(obj) else 0


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, then rename: readers never see half a file."""
    import torch

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
    if kind in generator_kinds():  # an upstream generator keeps its lead (0: Wav2Lip's inference indexing)
        return make_checkpoint(build_loaded(kind, {}, sd, path), mel_lead=generator_mel_lead(obj), **extra)
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": kind, "arch": kind, "config": {},
            "state_dict": {k: (v.detach().cpu() if hasattr(v, "detach") else v) for k, v in sd.items()},
            **extra}


def load_checkpoint(path: str | os.PathLike, arch: str | None = None) -> dict:
    """Load any supported file (upstream, ours, exported ``.pt``/``.safetensors``) as our format dict."""
    return to_ours(load_file(path), path, arch)


def inference_only(ckpt: dict) -> dict:
    """Strip a checkpoint of ours to what inference needs: format, kind, arch, config, state_dict, and a
    generator's ``mel_lead`` (written out, so that a file of the first release keeps meaning 2)."""
    keep = ("format", "format_version", "kind", "arch", "config", "state_dict", "mel_lead")
    if ckpt.get("kind") in generator_kinds():
        ckpt = {**ckpt, "mel_lead": generator_mel_lead(ckpt)}
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
    if ckpt.get("kind") in generator_kinds():
        meta["mel_lead"] = str(generator_mel_lead(ckpt))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


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
