"""CLI command `lipsync batch`: parse, build the executor, call ``run_batch``, draw progress and the summary."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from lipsync_cli.cli.app import app, console
from lipsync_cli.cli.options import FLAGS_BY_NAME, column_rows, given, with_dub_flags


def _print_again(err, data: dict) -> None:
    """One line per job a rerun does again, with the reason (options changed, video changed, interrupted...)."""
    for job_id, why in data.get("again", ()):
        err.print(f"runs again: {job_id} ({why})", highlight=False, markup=False)


@contextmanager
def _progress(quiet: bool, total_hint: list):
    """Yield an ``on_event`` callback: rich bars on a terminal (jobs, and frames of each running job), plain
    lines otherwise (one a finished job), nothing with --quiet."""
    err = console(stderr=True)
    if quiet:
        yield None
        return
    if not sys.stderr.isatty():
        state = {"n": 0, "todo": 0}

        def plain(kind, job_id, data):
            if kind == "plan":
                state["todo"] = data["todo"]
                err.print(f"{data['jobs']} job(s): {data['todo']} to run, {data['done']} already done, "
                          f"{data['failed']} failed before")
                _print_again(err, data)
            elif kind == "finish":
                state["n"] += 1
                what = f"{data['frames']} frames, {data['wall_s']:.1f} s" if data["state"] == "done" else data["error"]
                err.print(f"[{state['n']}/{state['todo']}] {data['state']} {job_id}: {what}")

        yield plain
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:>28}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), console=err, transient=False) as bar:
        jobs_task = bar.add_task("jobs", total=None, unit="jobs")
        frames: dict[tuple[str, str], int] = {}

        def rich_event(kind, job_id, data):
            if kind == "plan":
                bar.update(jobs_task, total=data["todo"])
                _print_again(bar.console, data)
            elif kind == "progress":
                stage, adv, total = data
                key = (job_id, stage)
                if key not in frames:
                    unit = "bytes" if stage.startswith("download") else "frames"
                    frames[key] = bar.add_task(f"{stage} {job_id}"[-28:], total=total, unit=unit)
                bar.update(frames[key], advance=adv, total=total)
            elif kind == "finish":
                bar.advance(jobs_task)
                for key in [k for k in frames if k[0] == job_id]:
                    bar.remove_task(frames.pop(key))

        yield rich_event


def _summary_table(report) -> None:
    from rich.table import Table

    s = report.summary
    t = Table(title="lipsync batch", show_edge=False)
    for col in ("done", "failed", "skipped", "pending", "ran now", "frames", "wall s", "frames/s"):
        t.add_column(col, justify="right")
    t.add_row(str(s["done"]), str(s["failed"]), str(s["skipped"]), str(s["pending"]), str(s["ran"]),
              str(s["frames"]), "" if s["wall_s"] is None else f"{s['wall_s']:.1f}",
              "" if not s.get("frames_per_s") else f"{s['frames_per_s']:.1f}")
    out = console()
    out.print(t)
    for r in report.rows:
        if r["state"] in ("failed", "skipped"):
            out.print(f"{r['state']}: {r['job']} (line {r['line']}): {r['error']}", highlight=False)
    if report.json_path:
        out.print(f"report: {report.json_path}, {report.csv_path}", highlight=False)


def _defaults(flags: dict, sets: list[str]) -> dict:
    """The options every row gets unless it sets them: dub's flags given to batch, and ``--set KEY=VALUE``."""
    from lipsync_cli.errors import BadOption

    defaults = given(flags)
    for item in sets:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise BadOption(f"--set {item!r}: give KEY=VALUE")
        if key in defaults and key in flags and flags[key] is not None:
            raise BadOption(f"--set {item} and {FLAGS_BY_NAME[key].flag} both give {key}: use one")
        defaults[key] = value
    return defaults


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as plain lines, every column but the last padded to its widest cell (greppable, any width)."""
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]).rstrip() for r in rows]


def _list_columns() -> None:
    out = console()
    rows = [("column", "type", "default", "meaning"), *column_rows()]
    for line in _aligned(rows):
        out.print(line, highlight=False, markup=False)


def _dry_run_table(plan) -> None:
    rows = [(p.job.line, p.job.id, str(p.job.video), str(p.job.audio), "run" if p.runs else "keep", p.why)
            for p in plan.jobs]
    rows += [(line, "-", "-", "-", "skip", f"invalid: {reason}") for _row, line, reason in plan.invalid]
    rows = [("line", "job", "video", "audio", "will", "why"),
            *((str(r[0]), *r[1:]) for r in sorted(rows, key=lambda r: r[0]))]
    out = console()
    for line in _aligned(rows):
        out.print(line, highlight=False, markup=False)
    runs = [p for p in plan.jobs if p.runs]
    whys: dict[str, int] = {}
    for p in runs:
        whys[p.why] = whys.get(p.why, 0) + 1
    out.print(f"dry run: {len(runs)} job(s) would run ({', '.join(f'{n} {w}' for w, n in whys.items()) or 'none'}), "
              f"{len(plan.jobs) - len(runs)} kept, {len(plan.invalid)} malformed row(s); nothing was run",
              highlight=False)


@app.command()
@with_dub_flags(unset=True)
def batch(
    manifest: Optional[Path] = typer.Argument(None, help="Jobs: a .csv, .jsonl or .yaml file, one row a job "
                                                          "(video, audio, optional output, any dub option)."),
    outdir: Optional[Path] = typer.Option(None, "-o", "--outdir", help="Output folder: the videos, the journal "
                                                                        "and report.json / report.csv."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: one per GPU, 1 on a CPU; 1 "
                                                     "runs in this process)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run on Ray (needs the ray extra): auto (the running "
                                                          "instance this machine belongs to), a cluster's ADDRESS, "
                                                          "or local (a private instance for this run)."),
    ray_gpus_per_job: float = typer.Option(0.0, help="GPUs each Ray actor holds (one actor per this many)."),
    ray_cpus_per_job: float = typer.Option(1.0, help="CPUs each Ray actor holds."),
    shard: Optional[str] = typer.Option(None, help="I/N: run only every Nth row starting at row I (SLURM/k8s "
                                                   "array jobs); each shard keeps its own journal."),
    merge: bool = typer.Option(False, "--merge-reports", help="Only combine the journals of OUTDIR (all "
                                                              "shards) into report.json / report.csv."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run the jobs that failed before again."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Run the valid rows even when some are "
                                                                    "malformed (those are reported skipped)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check every row (values, files, weights) and print "
                                                          "what each job would do and why; run nothing (exit 0, "
                                                          "or 2 with malformed rows)."),
    list_columns: bool = typer.Option(False, "--list-columns", help="Print every manifest column: its type, "
                                                                    "default and meaning."),
    cache_dir: Optional[Path] = typer.Option(None, help="Face-track cache (default OUTDIR/.cache/tracks); share "
                                                        "it between batches to never detect a video twice."),
    option: list[str] = typer.Option([], "--set", help="Default of every row for any column, KEY=VALUE (e.g. "
                                                       "--set crf=23 --set 'pads=0 10 0 0'), as a script writes "
                                                       "it; repeatable."),
    *,
    offline: bool = typer.Option(False, "--offline", help="Never download weights (also LIPSYNC_OFFLINE=1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary."),
    **flags,
) -> None:
    """Dub every row of MANIFEST into -o OUTDIR: resumable (rerun the same command), in parallel, on Ray.

    Every option of `lipsync dub` is also an option here, with the same name: the default of every row (a row's
    own cell wins). Paths given here are relative to the current folder, those in the manifest to its folder."""
    from lipsync_cli.batch import BatchOptions, merge_reports, parse_shard, plan_batch, run_batch
    from lipsync_cli.dub import DubOptions
    from lipsync_cli.errors import BadOption

    if list_columns:
        _list_columns()
        return
    if outdir is None:
        raise BadOption("give the output folder with -o OUTDIR")
    if merge:
        report = merge_reports(outdir)
        if not quiet:
            _summary_table(report)
        raise typer.Exit(report.exit_code)
    if manifest is None:
        raise BadOption("give a MANIFEST (or --merge-reports)")
    opts = BatchOptions(outdir=outdir, dub=DubOptions(offline=True if offline else None),
                        defaults=_defaults(flags, option), skip_invalid=skip_invalid or dry_run,
                        retry_failed=retry_failed, shard=parse_shard(shard) if shard else None, cache_dir=cache_dir)
    opts.validate()
    if dry_run:
        plan = plan_batch(manifest, opts)
        _dry_run_table(plan)
        if plan.invalid:
            console(stderr=True).print(f"error: {manifest}: {len(plan.invalid)} malformed row(s); fix them, or "
                                       "pass --skip-invalid to run the other rows", highlight=False)
            raise typer.Exit(2)
        return
    if ray is not None:
        if workers is not None:
            raise BadOption("--workers is for this machine; with --ray the cluster's resources decide")
        from lipsync_cli.batch.ray_executor import RayExecutor

        executor = RayExecutor(ray, gpus_per_job=ray_gpus_per_job, cpus_per_job=ray_cpus_per_job)
    else:
        from lipsync_cli.batch import InlineExecutor, LocalExecutor, default_workers

        n = workers if workers is not None else default_workers()
        if n < 1:
            raise BadOption(f"--workers must be at least 1, got {n}")
        executor = InlineExecutor() if n == 1 else LocalExecutor(n)
    with _progress(quiet, []) as on_event:
        report = run_batch(manifest, opts, executor, on_event=on_event)
    if not quiet:
        _summary_table(report)
    raise typer.Exit(report.exit_code)
