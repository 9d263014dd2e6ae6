"""Result files: JSON (everything, curves included), CSV (one row per video) and text for ``lipsync eval``.

Every file is written atomically (``files.atomic_path``): one that cannot be written (disk full, no permission)
raises WriteError naming it, and nothing of it is left."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from lipsync_cli.files import atomic_write

CSV_FIELDS = ("video", "status", "lse_d", "lse_c", "offset", "n_frames", "n_windows", "first_frame", "error")


def _clean(obj):
    """JSON-safe: NaN/inf become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, text)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text report (e.g. the benchmark's Markdown table) atomically: WriteError when it cannot be written,
    and then no file, not even a partial one."""
    return _atomic_write_text(path, text)


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as indented JSON atomically (NaN -> null)."""
    return _atomic_write_text(path, json.dumps(_clean(payload), indent=1) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[dict], fields: Sequence[str] = CSV_FIELDS) -> Path:
    """One CSV row per dict (extra keys ignored, missing ones empty)."""
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return _atomic_write_text(path, buf.getvalue())


def lse_payload(results, summary: dict, options=None) -> dict:
    """The JSON document of ``lipsync eval lse``."""
    from dataclasses import asdict

    from lipsync_cli.evaluate.lse import VSHIFT

    return {
        "protocol": {
            "metric": "LSE-D / LSE-C (SyncNet v2, Wav2Lip evaluation/scores_LSE)",
            "fps": 25,
            "sample_rate": 16000,
            "vshift": getattr(options, "vshift", VSHIFT),
            "options": asdict(options) if options is not None else None,
        },
        "summary": summary,
        "videos": [r.to_dict() for r in results],
    }
