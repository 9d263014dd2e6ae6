"""CLI command `lipsync batch`: parse, build the executor, call ``run_batch``, draw progress and the summary."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from lipsync_cli.cli.app import app, console


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


@app.command()
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
    cache_dir: Optional[Path] = typer.Option(None, help="Face-track cache (default OUTDIR/.cache/tracks); share "
                                                        "it between batches to never detect a video twice."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Default generator weights."),
    box: Optional[tuple[int, int, int, int]] = typer.Option(None, help="Default fixed face box X1 Y1 X2 Y2."),
    device: Optional[str] = typer.Option(None, help="Default device: auto | cpu | cuda | mps."),
    batch_size: Optional[int] = typer.Option(None, help="Default generator batch."),
    strict: Optional[bool] = typer.Option(None, "--strict/--no-strict", help="Default for frames without a face."),
    option: list[str] = typer.Option([], "--set", help="Default for any dub option column, KEY=VALUE (e.g. "
                                                       "--set crf=23 --set 'pads=0 10 0 0'); repeatable."),
    offline: bool = typer.Option(False, "--offline", help="Never download weights (also LIPSYNC_OFFLINE=1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary."),
) -> None:
    """Dub every row of MANIFEST into -o OUTDIR: resumable (rerun the same command), in parallel, on Ray."""
    from lipsync_cli.batch import BatchOptions, merge_reports, parse_shard, run_batch
    from lipsync_cli.dub import DubOptions
    from lipsync_cli.errors import BadOption

    if outdir is None:
        raise BadOption("give the output folder with -o OUTDIR")
    if merge:
        report = merge_reports(outdir)
        if not quiet:
            _summary_table(report)
        raise typer.Exit(report.exit_code)
    if manifest is None:
        raise BadOption("give a MANIFEST (or --merge-reports)")
    defaults: dict = {}
    for item in option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadOption(f"--set {item!r}: give KEY=VALUE")
        defaults[key.strip()] = value
    for key, value in (("checkpoint", checkpoint and checkpoint.resolve()), ("box", box), ("device", device),
                       ("batch_size", batch_size), ("strict", strict)):
        if value is not None:
            defaults[key] = value
    opts = BatchOptions(outdir=outdir, dub=DubOptions(offline=True if offline else None), defaults=defaults,
                        skip_invalid=skip_invalid, retry_failed=retry_failed,
                        shard=parse_shard(shard) if shard else None, cache_dir=cache_dir)
    opts.validate()
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
