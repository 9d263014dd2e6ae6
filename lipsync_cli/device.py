"""Devices and precision: the one home for "which device", "which dtype" and "was that out of memory".

Every command (dub, detect, eval, train, inspect) resolves ``--device`` and ``--precision`` here, so the rules
(and their CPU defaults) cannot drift apart between modules.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

from lipsync_cli.errors import BadOption

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def import_torch():
    """``import torch`` for a run that shares the cores with other stages (the dub's decoder, blend and encoder):
    unless torch is loaded already or the environment says otherwise, OpenMP's idle threads sleep at the end of
    each parallel region instead of spinning (``OMP_WAIT_POLICY=PASSIVE``). A spinning intra-op thread burns the
    core that ffmpeg's encoder or the blend would use; sleeping changes no result, only who waits."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    return torch


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str) -> str:
    """'auto' picks cuda > mps > cpu; an explicit device that is not there is a user error.

    ``cuda:N`` is accepted and returned as given."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if _mps_available():
            return "mps"
        return "cpu"
    base = name.split(":", 1)[0]
    if base not in DEVICES:
        raise BadOption(f"--device {name!r} is not one of {', '.join(DEVICES)}")
    if base == "cuda" and not torch.cuda.is_available():
        raise BadOption(f"--device {name}: no CUDA GPU is visible to torch", "use --device cpu or auto")
    if base == "mps" and not _mps_available():
        raise BadOption("--device mps: Apple's MPS backend is not available", "use --device cpu or auto")
    return name


def device_type(device) -> str:
    """'cuda' / 'cpu' / 'mps' of a device string or ``torch.device`` (``cuda:1`` -> 'cuda')."""
    return str(getattr(device, "type", device)).split(":", 1)[0]


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX), which makes bf16 inference much faster."""
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - very old torch / non-x86
        return False


def resolve_precision(name: str, device, *, training: bool = False) -> str:
    """The concrete precision ('fp32' / 'bf16' / 'fp16') for ``name`` on ``device``.

    'auto' for inference: bf16 on CUDA where supported (else fp16), bf16 on a CPU with native bf16, else fp32.
    'auto' for training: the same on CUDA, fp32 everywhere else (CPU bf16 training loses too much accuracy to
    be a default). fp16 on a CPU is a user error.
    """
    import torch

    if name not in PRECISIONS:
        raise BadOption(f"--precision {name!r} is not one of {', '.join(PRECISIONS)}")
    kind = device_type(device)
    if name == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if kind == "cpu" and not training and cpu_has_bf16():
            return "bf16"
        return "fp32"
    if name == "fp16" and kind == "cpu":
        raise BadOption("--precision fp16 is not supported on the CPU", "use bf16 or fp32")
    return name


def amp_dtype(precision: str):
    """The autocast dtype of a concrete precision, or None for float32."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device, precision: str):
    """The autocast context for a concrete precision on ``device`` (a no-op for fp32)."""
    import torch

    dtype = amp_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type(device), dtype=dtype)


def is_out_of_memory(err: BaseException) -> bool:
    """True for a device out-of-memory error: CUDA's ``OutOfMemoryError`` and MPS's RuntimeError.

    Only these: any other RuntimeError is a bug and must not be retried as if memory ran out."""
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    return isinstance(err, RuntimeError) and "MPS backend out of memory" in str(err)


def empty_cache(device) -> None:
    """Give cached blocks back after an out-of-memory error, so a smaller retry can fit."""
    import torch

    kind = device_type(device)
    if kind == "cuda":
        torch.cuda.empty_cache()
    elif kind == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def in_micro_batches(fn, n: int, state: dict, device, cap: int | None = None) -> None:
    """Call ``fn(start, stop)`` over ``range(n)`` in micro-batches of ``state["batch"]`` (at most ``cap``). On a
    device out-of-memory error (``is_out_of_memory``) the cache is emptied, ``state["batch"]`` halved for good (the
    smaller size sticks for the rest of the run) and the micro-batch retried; at batch 1 the error is raised."""
    import logging

    k = 0
    while k < n:
        b = max(1, int(state["batch"]))
        if cap is not None:
            b = min(b, cap)
        try:
            fn(k, min(n, k + b))
            k += b
        except (RuntimeError, MemoryError) as err:
            if not is_out_of_memory(err) or b == 1:
                raise
            empty_cache(device)
            state["batch"] = b // 2
            logging.getLogger(__name__).warning("out of %s memory at batch %d; using batch %d from now on",
                                                device, b, b // 2)


def cpu_count() -> int:
    """Cores this process may use (its affinity mask where the OS has one): what worker counts are capped by."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1
