"""Pictures of an evaluation (matplotlib, Agg backend): per-video distance-vs-offset curves, per-run
histograms."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def safe_name(video: str) -> str:
    """A file name for a video's picture: its stem with anything unusual replaced."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(video).stem) or "video"


def plot_curve(result, out: str | os.PathLike) -> Path:
    """Mean SyncNet distance against the AV offset for one scored video; the dip marks where audio and lips
    agree, LSE-D is its depth, LSE-C the gap between the median and the dip."""
    import numpy as np

    plt = _pyplot()
    curve = np.asarray(result.curve, dtype=float)
    vshift = (len(curve) - 1) // 2
    offsets = vshift - np.arange(len(curve))  # index k stands for offset vshift - k
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    ax.plot(offsets, curve, marker="o", ms=3, lw=1.2)
    med = float(np.median(curve))
    ax.axhline(med, color="grey", ls="--", lw=0.8, label=f"median {med:.3f}")
    ax.axvline(result.offset, color="tab:red", lw=0.8, label=f"offset {result.offset:+d}")
    ax.set_xlabel("AV offset (frames at 25 fps)")
    ax.set_ylabel("mean distance")
    ax.set_title(f"{Path(result.video).name}: LSE-D {result.lse_d:.3f}  LSE-C {result.lse_c:.3f}", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _save(plt, fig, out)


def _save(plt, fig, out: str | os.PathLike) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_lse_c_hist(results: Sequence, out: str | os.PathLike, title: str = "LSE-C over videos") -> Path:
    """Histogram of LSE-C over the scored videos of a run."""
    plt = _pyplot()
    vals = [r.lse_c for r in results if getattr(r, "ok", False) and r.lse_c is not None]
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    if vals:
        ax.hist(vals, bins=max(5, min(30, len(vals))), color="tab:blue", alpha=0.8)
        ax.axvline(sum(vals) / len(vals), color="tab:red", lw=1, label=f"mean {sum(vals) / len(vals):.3f}")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no video could be scored", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("LSE-C (higher: more confident sync)")
    ax.set_ylabel("videos")
    ax.set_title(f"{title} (n={len(vals)})", fontsize=9)
    return _save(plt, fig, out)


def write_plots(results: Sequence, folder: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Every scored video's curve (``<prefix><stem>_offsets.png``) and the run's
    ``<prefix>lse_c_hist.png``."""
    folder = Path(folder)
    written, seen = [], set()
    for r in results:
        if not getattr(r, "ok", False) or not r.curve:
            continue
        name = safe_name(r.video)
        while name in seen:
            name += "_"
        seen.add(name)
        written.append(plot_curve(r, folder / f"{prefix}{name}_offsets.png"))
    written.append(plot_lse_c_hist(results, folder / f"{prefix}lse_c_hist.png"))
    return written
