"""The batch journal: an append-only JSON Lines file in the output folder, one event per line.

Why JSONL and not SQLite: batches run on shared filesystems (NFS, SMB, Lustre: what Ray nodes and SLURM array
jobs see), where SQLite's locking is unreliable by its own documentation, and each shard writes its own journal,
which a plain file makes trivial to merge (read them all, the last event of a job wins). One ``write()`` of one
short line with ``O_APPEND`` is never interleaved with another, a killed run leaves at most a torn last line
(skipped on reading), and the file can be read with ``tail``, ``jq`` or a text editor. The state of a job is
the last event about it; a journal of a few thousand jobs replays in milliseconds.

Events: ``{"job", "state", "time", ...}`` with state ``pending | running | done | failed | skipped``; ``done``
and ``failed`` carry the inputs' identity (size, mtime, SHA-256 of the first and last 64 KiB), the options'
fingerprint and the output, so a rerun can tell whether a finished job is still valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

STATES = ("pending", "running", "done", "failed", "skipped")
JOURNAL_GLOB = "journal*.jsonl"
EDGE_BYTES = 64 << 10  # head and tail hashed for an input's identity


def journal_path(outdir: str | os.PathLike, shard: tuple[int, int] | None = None) -> Path:
    """``OUTDIR/journal.jsonl``, or ``OUTDIR/journal.shard-I-of-N.jsonl`` for shard I of N."""
    name = "journal.jsonl" if shard is None else f"journal.shard-{shard[0]}-of-{shard[1]}.jsonl"
    return Path(outdir) / name


def file_identity(path: str | os.PathLike | None) -> dict | None:
    """Size, mtime (ns) and the SHA-256 of the first and last 64 KiB of a file; None when it cannot be read.
    Cheap on any size of file, and it changes when the file is replaced, re-encoded or appended to."""
    if path is None:
        return None
    try:
        st = os.stat(path)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            h.update(f.read(EDGE_BYTES))
            if st.st_size > EDGE_BYTES:
                f.seek(max(EDGE_BYTES, st.st_size - EDGE_BYTES))
                h.update(f.read(EDGE_BYTES))
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "edges": h.hexdigest()[:32]}


# options that do not change what a job writes: changing them does not make a finished job stale
NEUTRAL_OPTIONS = ("offline", "max_pending_bytes", "batch_size")


def options_fingerprint(options) -> str:
    """A short hash of a DubOptions (every field but NEUTRAL_OPTIONS, nested dataclasses too): a changed option
    re-runs a job."""
    data = {k: v for k, v in dataclasses.asdict(options).items() if k not in NEUTRAL_OPTIONS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def job_inputs(job) -> dict[str, Any]:
    """The identity of every file a job reads: video, audio, and the checkpoint / track files it names."""
    files = {"video": job.video, "audio": job.audio, "checkpoint": job.options.checkpoint,
             "track": job.options.track}
    return {k: file_identity(v) for k, v in files.items() if v is not None}


class Journal:
    """Appends events to one journal file; ``load_states`` reads every journal of a folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)

    def record(self, job_id: str, state: str, **fields: Any) -> dict:
        if state not in STATES:
            raise ValueError(f"unknown job state {state!r}")
        event = {"job": job_id, "state": state, "time": round(time.time(), 3), **fields}
        line = (json.dumps(event, default=str, separators=(",", ":")) + "\n").encode()
        os.write(self._fd, line)  # one write with O_APPEND: never interleaved with another writer's line
        if state in ("done", "failed"):
            os.fsync(self._fd)
        return event

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_events(path: str | os.PathLike) -> list[dict]:
    """The events of one journal file, in order; a torn or foreign line is skipped."""
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(ev, dict) and "job" in ev and ev.get("state") in STATES:
                    out.append(ev)
    except OSError:
        pass
    return out


def load_states(outdir: str | os.PathLike) -> dict[str, dict]:
    """The latest event of each job over every journal in ``outdir`` (all shards): by time, then file order."""
    latest: dict[str, dict] = {}
    for path in sorted(Path(outdir).glob(JOURNAL_GLOB)):
        for ev in read_events(path):
            old = latest.get(ev["job"])
            if old is None or ev.get("time", 0) >= old.get("time", 0):
                latest[ev["job"]] = ev
    return latest


def still_valid(event: dict, inputs: dict, fingerprint: str, output: Path) -> str | None:
    """Why a job recorded done must run again (inputs or options changed, output gone), or None if it stands."""
    if event.get("options") != fingerprint:
        return "options changed"
    changed = sorted(k for k in set(inputs) | set(event.get("inputs") or {})
                     if (event.get("inputs") or {}).get(k) != inputs.get(k))
    if changed:
        return f"{', '.join(changed)} changed"
    try:
        size = output.stat().st_size
    except OSError:
        return "output missing"
    if event.get("output_size") is not None and size != event["output_size"]:
        return "output changed"
    return None
