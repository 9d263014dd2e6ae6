"""``run_batch``: plan a manifest against its journal, run what is left on an executor, report.

The driver is the only writer of the journal. Before anything runs, every row is validated (``load_manifest``:
values, files, weights) and every job is planned (``plan_batch``, what ``--dry-run`` shows): done and still
valid -> kept; failed -> kept unless ``retry_failed`` or its inputs changed; anything else (new, pending, left
``running`` by a killed run, done but its inputs, options or output changed) -> run. An interrupt (Ctrl-C, SIGTERM)
stops the executor, puts the running jobs back to pending, writes the report, and re-raises.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipsync_cli.batch.executors import Executor, InlineExecutor
from lipsync_cli.batch.journal import (
    Journal,
    job_inputs,
    journal_path,
    load_states,
    options_fingerprint,
    still_valid,
)
from lipsync_cli.batch.manifest import Job, Manifest, load_manifest
from lipsync_cli.dub import DubOptions
from lipsync_cli.errors import BadOption
from lipsync_cli.files import atomic_write

REPORT_COLUMNS = ("job", "line", "state", "video", "audio", "output", "frames", "wall_s", "fps", "track", "host",
                  "error", "note")
# Batch events for a user interface: (kind, job id or None, data). Kinds: "plan" (data: counts), "start",
# "progress" (stage, advance, total), "finish" (the job's report row).
EventFn = Callable[[str, "str | None", Any], None]


@dataclass(frozen=True)
class BatchOptions:
    """How a batch runs (the jobs' dub options come from the manifest over ``dub`` and ``defaults``)."""

    outdir: Path
    dub: DubOptions = field(default_factory=DubOptions)  # options under every row
    defaults: dict[str, Any] = field(default_factory=dict)  # option columns for rows that do not set them
    skip_invalid: bool = False  # run the valid rows of a manifest with malformed ones (those are reported skipped)
    retry_failed: bool = False
    shard: tuple[int, int] | None = None  # (I, N), 1-based: rows whose index % N == I - 1
    cache_dir: Path | None = None  # face tracks; None: OUTDIR/.cache/tracks

    def validate(self) -> None:
        if self.shard is not None:
            i, n = self.shard
            if n < 1 or not 1 <= i <= n:
                raise BadOption(f"--shard {i}/{n}: give I/N with 1 <= I <= N")


@dataclass
class BatchReport:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    json_path: Path | None = None
    csv_path: Path | None = None

    @property
    def failed(self) -> int:
        return self.summary["failed"]

    @property
    def exit_code(self) -> int:
        """0 when no job failed, 1 otherwise (the CLI's exit code)."""
        return 1 if self.failed else 0


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise BadOption(f"--shard {text!r}: give I/N, e.g. 1/4") from None
    if n < 1 or not 1 <= i <= n:
        raise BadOption(f"--shard {text}: give I/N with 1 <= I <= N")
    return i, n


def shard_suffix(shard: tuple[int, int] | None) -> str:
    return "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"


def in_shard(row: int, shard: tuple[int, int] | None) -> bool:
    return shard is None or row % shard[1] == shard[0] - 1


def _row(job: Job | None, event: dict) -> dict[str, Any]:
    r = {k: event.get(k) for k in REPORT_COLUMNS}
    if job is not None:
        r.update(job=job.id, line=job.line, video=str(job.video), audio=str(job.audio), output=str(job.output))
    return r


def summarise(rows: list[dict[str, Any]], wall_s: float | None, ran: int = 0, frames: int = 0) -> dict[str, Any]:
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in ("done", "failed", "skipped", "pending")}
    return {"jobs": len(rows), **counts, "ran": ran, "frames": frames,
            "wall_s": round(wall_s, 3) if wall_s is not None else None,
            "frames_per_s": round(frames / wall_s, 2) if wall_s else None}


def write_report(outdir: Path, rows: list[dict[str, Any]], summary: dict[str, Any], suffix: str = ""
                 ) -> tuple[Path, Path]:
    """``OUTDIR/report{suffix}.json`` (summary + jobs) and ``report{suffix}.csv`` (one row a job), atomically."""
    jpath = atomic_write(outdir / f"report{suffix}.json", json.dumps({"summary": summary, "jobs": rows}, indent=1,
                                                                        default=str))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in REPORT_COLUMNS})
    cpath = atomic_write(outdir / f"report{suffix}.csv", buf.getvalue())
    return jpath, cpath


def merge_reports(outdir: str | Path) -> BatchReport:
    """``report.json`` / ``report.csv`` of every job of every journal in ``outdir`` (all shards together)."""
    outdir = Path(outdir)
    states = load_states(outdir)
    if not states:
        raise BadOption(f"no batch journal in {outdir}", "run `lipsync batch MANIFEST -o OUTDIR` first")
    rows = sorted((_row(None, ev) for ev in states.values()), key=lambda r: (r["line"] or 0, r["job"]))
    frames = sum(int(r["frames"] or 0) for r in rows if r["state"] == "done")
    walls = [float(r["wall_s"]) for r in rows if r["state"] == "done" and r["wall_s"] is not None]
    summary = summarise(rows, None, frames=frames)
    summary["job_wall_s"] = round(sum(walls), 3)
    jpath, cpath = write_report(outdir, rows, summary)
    return BatchReport(rows, summary, jpath, cpath)


@dataclass(frozen=True)
class PlannedJob:
    """What a run would do with one job, and why."""

    job: Job
    runs: bool  # False: kept as it is (done, or failed without --retry-failed)
    why: str  # new | pending | interrupted | done | failed | retried | options changed | video changed | ...
    note: str | None  # the report's note: why it runs again, or why it is kept
    previous: dict | None  # its last journal event


@dataclass
class BatchPlan:
    manifest: Manifest
    jobs: list[PlannedJob]  # those of this shard, in row order
    invalid: list[tuple[int, int, str]]  # (row, line, reason) of this shard's malformed rows (skip_invalid)

    @property
    def todo(self) -> list[Job]:
        return [p.job for p in self.jobs if p.runs]


def plan_batch(manifest: str | Path | Manifest, options: BatchOptions) -> BatchPlan:
    """Validate ``manifest`` (every row, its files and weights: ``load_manifest``) and decide each job against
    the journals of ``options.outdir``, writing nothing: ``lipsync batch --dry-run`` prints this, ``run_batch``
    runs it. Raises ManifestError for malformed rows unless ``options.skip_invalid``."""
    options.validate()
    outdir = Path(options.outdir).resolve()
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest, outdir, options.defaults, options.dub, skip_invalid=options.skip_invalid)
    states = load_states(outdir)
    planned = []
    for job in (j for j in manifest.jobs if in_shard(j.row, options.shard)):
        inputs, fp = job_inputs(job), options_fingerprint(job.options)
        prev = states.get(job.id)
        state = prev["state"] if prev else None
        if state == "done":
            changed = still_valid(prev, inputs, fp, job.output)
            p = (PlannedJob(job, False, "done", "done in an earlier run", prev) if changed is None
                 else PlannedJob(job, True, changed, changed, prev))
        elif state == "failed":
            changed = still_valid({**prev, "output_size": None}, inputs, fp, job.output)
            if not options.retry_failed and changed in (None, "output missing"):
                p = PlannedJob(job, False, "failed", "failed in an earlier run (--retry-failed runs it)", prev)
            else:
                note = "retried" if options.retry_failed else changed
                p = PlannedJob(job, True, note, note, prev)
        elif state in ("pending", "running"):  # running: its run was killed
            why = "interrupted" if state == "running" or prev.get("note") == "interrupted" else "pending"
            p = PlannedJob(job, True, why, None, prev)
        else:
            p = PlannedJob(job, True, "new", None, prev)
        planned.append(p)
    invalid = [(row, line, reason) for row, line, reason in manifest.invalid if in_shard(row, options.shard)]
    return BatchPlan(manifest, planned, invalid)


def run_batch(manifest: str | Path | Manifest, options: BatchOptions, executor: Executor | None = None, *,
              on_event: EventFn | None = None) -> BatchReport:
    """Run every job of ``manifest`` (a path, or a ``Manifest`` from ``load_manifest``) that is not already
    done, on ``executor`` (default: this process, one job at a time); return the report, also written to
    ``OUTDIR/report.json`` and ``report.csv`` (``report.shard-I-of-N.*`` for a shard).

    Raises ManifestError (nothing runs) for malformed rows unless ``options.skip_invalid``; KeyboardInterrupt
    after a clean stop. A failed job never raises: see ``BatchReport.failed`` / ``exit_code``."""
    t0 = time.perf_counter()
    plan = plan_batch(manifest, options)
    outdir = Path(options.outdir).resolve()
    emit = on_event or (lambda kind, job_id, data: None)
    outdir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(options.cache_dir) if options.cache_dir else outdir / ".cache" / "tracks"
    by_id = {p.job.id: p.job for p in plan.jobs}
    rows: dict[str, dict[str, Any]] = {}
    todo: list[Job] = []
    notes: dict[str, str | None] = {}  # why a job runs again (inputs changed, retried...)
    with Journal(journal_path(outdir, options.shard)) as journal:
        for _row_index, line, reason in plan.invalid:
            key = f"line-{line}"
            ev = journal.record(key, "skipped", line=line, error=reason)
            rows[key] = _row(None, ev)
        for p in plan.jobs:
            job = p.job
            if not p.runs:
                rows[job.id] = _row(job, {**p.previous, "note": p.note})
                continue
            where = {"line": job.line, "video": str(job.video), "audio": str(job.audio), "output": str(job.output)}
            ev = journal.record(job.id, "pending", **where, note=p.note)
            rows[job.id] = _row(job, ev)
            notes[job.id] = p.note
            todo.append(job)
        emit("plan", None, {"jobs": len(plan.jobs), "todo": len(todo), "done": sum(
            1 for r in rows.values() if r["state"] == "done"), "failed": sum(
            1 for r in rows.values() if r["state"] == "failed"),
            "again": [(p.job.id, p.why) for p in plan.jobs if p.runs and p.why != "new"]})

        executor = executor or InlineExecutor()
        running: dict[str, Job] = {}
        ran = frames = 0
        try:
            if todo:
                executor.start(cache_dir, lambda jid, stage, adv, total: emit("progress", jid, (stage, adv, total)))
            queue = list(todo)
            while queue or running:
                while queue and len(running) < executor.slots:
                    job = queue.pop(0)
                    journal.record(job.id, "running", line=job.line)
                    running[job.id] = job
                    emit("start", job.id, job)
                    executor.submit(job)
                for job_id, outcome in executor.wait(0.5):
                    job = running.pop(job_id, None) or by_id[job_id]
                    state = outcome.get("state", "failed")
                    ev = journal.record(
                        job.id, state, line=job.line, video=str(job.video), audio=str(job.audio),
                        output=str(job.output), inputs=job_inputs(job), options=options_fingerprint(job.options),
                        note=notes.get(job.id), **{k: v for k, v in outcome.items() if k != "state"})
                    rows[job.id] = _row(job, ev)
                    ran += 1
                    frames += int(outcome.get("frames") or 0)
                    emit("finish", job.id, rows[job.id])
            if todo:
                executor.close()
        except BaseException:
            executor.stop()  # running jobs are interrupted: no partial output
            for job in running.values():
                ev = journal.record(job.id, "pending", line=job.line, note="interrupted")
                rows[job.id] = _row(job, ev)
            _finish(outdir, rows, t0, ran, frames, options.shard)
            raise
    return _finish(outdir, rows, t0, ran, frames, options.shard)


def _finish(outdir: Path, rows: dict[str, dict], t0: float, ran: int, frames: int,
            shard: tuple[int, int] | None) -> BatchReport:
    ordered = sorted(rows.values(), key=lambda r: (r["line"] or 0, r["job"]))
    summary = summarise(ordered, time.perf_counter() - t0, ran, frames)
    jpath, cpath = write_report(outdir, ordered, summary, shard_suffix(shard))
    return BatchReport(ordered, summary, jpath, cpath)
