"""Reading weight files safely and telling what they hold; the layer every network's loader stands on.

Never unpickles code: every load goes through ``torch.load(..., weights_only=True)`` or safetensors, so a
file whose pickle would import or call anything is refused before any of it runs. What a file is comes from
the key signatures the networks register themselves (``checkpoint_kinds``); this module imports no network, so
a network's own loader (``models.syncnet.load_expert``...) can use it without a cycle. Rebuilding generators,
saving, import and export live in ``checkpoint``, which re-exports everything here.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

# KIND_NAMES: kind -> human name ("unknown" included), filled by each network's own registration
from lipsync_cli.checkpoint_kinds import KIND_NAMES, kind_of_keys
from lipsync_cli.errors import CheckpointError, CheckpointMismatch, InputNotFound

FORMAT_NAME = "lipsync_cli"
FORMAT_VERSION = 1


def load_file(path: str | os.PathLike, mmap: bool = False) -> Any:
    """``torch.load`` (or safetensors) a file safely onto the CPU.

    ``mmap``: map a file in torch's zip format instead of reading it (tensors are paged in from the file when
    first used: faster, nothing copied twice); for read-only uses, as the mapping holds the file open until
    the tensors are freed. Files in the legacy format (upstream Wav2Lip's) are read as usual.
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
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and magic == b"PK")
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
    out = {
        "format": FORMAT_NAME,
        "format_version": int(meta.get("format_version") or FORMAT_VERSION),
        "kind": meta.get("kind") or meta.get("arch"),
        "arch": meta.get("arch") or None,
        "config": config,
        "state_dict": sd,
    }
    if meta.get("mel_lead") not in (None, ""):
        out["mel_lead"] = int(meta["mel_lead"])
    return out


def unwrap_state_dict(obj: Any) -> dict:
    """The tensor dict inside any supported container, with DataParallel ``module.`` prefixes removed.

    Containers: ours and Wav2Lip's ``{'state_dict': ...}``; basicsr's ``{'params_ema': ...}`` / ``{'params': ...}``
    (GFPGANv1.4.pth; the EMA weights first, as GFPGANer loads them)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "params_ema", "params"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def detect_kind(obj: Any) -> str:
    """What a loaded file is (see KIND_NAMES): ours name their kind; other files are told by their keys, which
    each network describes itself (``checkpoint_kinds.register_kind`` in its module)."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
        named = obj.get("kind") or obj.get("arch")
        if named:
            return str(named)
    try:
        sd = unwrap_state_dict(obj)
    except CheckpointError:
        return "unknown"
    return kind_of_keys(sd)


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


def load_network(path: str | os.PathLike, net, kind: str, hint: str, assign: bool = False):
    """Load a file of ``kind`` (see KIND_NAMES) strictly into ``net``; a file of another kind, or whose tensors do
    not fit, raises CheckpointMismatch with ``hint``. Returns ``net`` (mode and device unchanged). ``assign``: the
    file's tensors become the parameters (``net`` may then be built on the meta device: nothing is allocated
    twice)."""
    obj = load_file(path)
    expect_kind(path, obj, (kind,))
    try:
        net.load_state_dict(unwrap_state_dict(obj), strict=True, assign=assign)
    except RuntimeError as err:
        lines = str(err).splitlines()
        detail = lines[1] if len(lines) > 1 else str(err)
        raise CheckpointMismatch(f"{path} does not fit the {KIND_NAMES[kind]}: {detail.strip()[:200]}", hint) from None
    return net


def is_ours(obj: Any) -> bool:
    """True for a dict in our self-describing format."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT_NAME
