"""Outcome checks shared by the dub tests: which pixels a dub changed and which it left alone; the CLI run as a
user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`lipsync ARGS` in a new process, offline, without LIPSYNC_DEBUG's tracebacks."""
    full_env = {**os.environ, "LIPSYNC_OFFLINE": "1", **(env or {})}
    full_env.pop("LIPSYNC_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "lipsync_cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=600)


def read_frames(path, n: int | None = None) -> list[np.ndarray]:
    from lipsync_cli.media.decode import FrameReader

    with FrameReader(path, max_frames=n) as reader:
        return list(reader)


def region_changes(src: list[np.ndarray], out: list[np.ndarray], box) -> dict[str, float]:
    """Mean absolute difference (grey levels) between output and source frames, in three regions: outside the
    box, the box's upper 30% (eyes: the feather blend keeps them) and its lower half (the mouth)."""
    x1, y1, x2, y2 = box
    h = y2 - y1
    n = min(len(src), len(out))
    d = np.stack([np.abs(out[k].astype(np.int16) - src[k].astype(np.int16)) for k in range(n)])  # (n, H, W, 3)
    inside = np.zeros(d.shape[1:3], bool)
    inside[y1:y2, x1:x2] = True
    return {"outside": float(d[:, ~inside].mean()), "upper": float(d[:, y1:y1 + int(0.3 * h), x1:x2].mean()),
            "mouth": float(d[:, y1 + h // 2:y2, x1:x2].mean())}


def assert_mouth_redrawn(src_video, out_video, box, n: int | None = None, noise: float = 3.0) -> dict:
    """The mouth region changed clearly; outside the box (and the eyes) only re-encoding noise."""
    ch = region_changes(read_frames(src_video, n), read_frames(out_video, n), box)
    assert ch["outside"] < noise, ch
    assert ch["upper"] < noise + 1, ch
    assert ch["mouth"] > 4 * noise, ch
    return ch


def foreign_warnings(stderr: str) -> list[str]:
    """The lines of a command's stderr where another library's warning reached the user (``FutureWarning: ...``,
    ``UserWarning: ...``, Ray's ``WARNING ...``): our own messages are ``warning: ...`` lines, which do not count."""
    import re

    return [line for line in stderr.splitlines()
            if re.search(r"\b[A-Z]\w*Warning\b|\bWARNING\b|warnings\.warn", line)]
