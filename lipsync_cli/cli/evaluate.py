"""CLI commands `lipsync eval lse` and `lipsync eval benchmark`."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lipsync_cli.cli.app import app, console

eval_app = typer.Typer(
    help="Evaluate lip sync: SyncNet LSE-D / LSE-C and the papers' benchmark protocol.", no_args_is_help=True
)
app.add_typer(eval_app, name="eval")

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")


_console = console


def _fmt(v, spec: str = ".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def expand_videos(paths: list[Path]) -> list[Path]:
    """Files as given; folders expand to their video files (sorted, not recursive)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES and f.is_file())
        else:
            out.append(p)  # a missing file becomes a row with its error
    return out


@eval_app.command("lse")
def lse(
    videos: Annotated[list[Path], typer.Argument(help="Videos to score, or folders of videos.")],
    syncnet: Annotated[
        Path | None, typer.Option(help="syncnet_v2.model (default: the registry's syncnet_v2).")
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="track: follow the face and score SyncNet's 224x224 face crops "
            "(real-video pipeline) | crop: score whole frames resized to 224x224 "
            "(LRS protocol, for clips that are already face crops)."
        ),
    ] = "track",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write every result (curves included) here.")
    ] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write one row per video here.")] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Folder for PNGs: per-video distance-vs-offset curves and the LSE-C histogram."),
    ] = None,
    detector: Annotated[str, typer.Option(help="Track mode face detector: s3fd | insightface.")] = "s3fd",
    detector_weights: Annotated[
        Path | None, typer.Option(help="Detector weights (s3fd .pth, or an insightface .onnx / pack name).")
    ] = None,
    det_size: Annotated[
        Optional[int], typer.Option(help="Longest side (px) of the frames the detector sees (default 320 on CPU, "
                                         "640 on GPU).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="5-frame windows per SyncNet pass.")] = 20,
    vshift: Annotated[int, typer.Option(help="Largest AV offset tried, frames (the protocol uses 15).")] = 15,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps (auto: cuda > mps > cpu).")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table, no progress.")] = False,
) -> None:
    """Per-video LSE-D, LSE-C and AV offset, computed exactly as Wav2Lip's evaluation scripts do."""
    from lipsync_cli.evaluate import lse as L
    from lipsync_cli.evaluate.report import lse_payload, write_csv, write_json

    options = L.LSEOptions(
        mode=mode,
        vshift=vshift,
        batch_size=batch_size,
        device=device,
        detector=detector,
        detector_weights=detector_weights,
        det_size=det_size,
    )
    options.validate()
    paths = expand_videos(videos)
    if not paths:
        from lipsync_cli.errors import InputNotFound

        raise InputNotFound(f"no videos found in {', '.join(map(str, videos))}")
    err_console = _console(stderr=True)
    show = not quiet and sys.stderr.isatty()

    def progress(done: int, total: int, path: str) -> None:
        if show and path:
            err_console.print(f"[{done + 1}/{total}] {path}", highlight=False)

    results = L.score_videos(paths, options, syncnet=syncnet, progress=progress)
    summary = L.summarize(results)
    if json_out:
        write_json(json_out, lse_payload(results, summary, options))
    if csv_out:
        write_csv(csv_out, [r.to_dict() for r in results])
    if plot:
        from lipsync_cli.evaluate.plots import write_plots

        write_plots(results, plot)
    if not quiet:
        _print_lse_table(results, summary, mode)
    if summary["scored"] == 0:  # nothing to report is a failure, for scripts too (the files above say why)
        err_console.print(f"error: none of the {len(results)} video(s) could be scored", style="red", highlight=False)
        raise typer.Exit(1)


def _print_lse_table(results: list, summary: dict, mode: str) -> None:
    """The per-video table of ``eval lse`` and its mean row, then each failed video's reason."""
    from rich.table import Table

    table = Table(title=f"LSE ({mode} mode)")
    for col, just in (
        ("video", "left"),
        ("status", "left"),
        ("LSE-D ↓", "right"),
        ("LSE-C ↑", "right"),
        ("offset", "right"),
        ("frames", "right"),
    ):
        table.add_column(col, justify=just)
    for r in results:
        table.add_row(
            Path(r.video).name,
            r.status if r.ok else f"[red]{r.status}[/red]",
            _fmt(r.lse_d),
            _fmt(r.lse_c),
            _fmt(r.offset, "+d"),
            str(r.n_frames),
        )
    table.add_section()
    table.add_row(
        f"mean over {summary['scored']} of {summary['videos']}",
        "",
        _fmt(summary["lse_d"]),
        _fmt(summary["lse_c"]),
        "",
        "",
    )
    console = _console()
    console.print(table)
    for r in results:
        if not r.ok:
            console.print(f"{r.video}: {r.error}", style="red", highlight=False)


@eval_app.command("benchmark")
def benchmark(
    data: Annotated[Path, typer.Option(help="Prepared dataset root (<speaker>/<clip>/<i>.jpg + audio.wav).")],
    test_list: Annotated[
        Path,
        typer.Option(
            help="Test clips, one speaker/clip per line (relative paths are also "
            "looked for under DATA and DATA/filelists)."
        ),
    ],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Generator weights to evaluate.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder for benchmark.json, benchmark.md, the dubbed videos and plots."
        ),
    ] = Path("benchmark"),
    arch: Annotated[
        str | None, typer.Option(help="Generator architecture (default: from the checkpoint).")
    ] = None,
    syncnet: Annotated[
        Path | None, typer.Option(help="syncnet_v2.model (default: the registry's syncnet_v2).")
    ] = None,
    pairs: Annotated[
        Path | None,
        typer.Option(
            help="AUDIO_CLIP VIDEO_CLIP per line (Wav2Lip's test_filelists "
            "format); default: seeded random pairs."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random pairing.")] = 0,
    reconstruction: Annotated[
        bool,
        typer.Option(
            "--reconstruction", help="Dub each video with its own audio and add PSNR, SSIM, LPIPS, FID."
        ),
    ] = False,
    inception: Annotated[
        Path | None,
        typer.Option(
            help="Inception-v3 weights for FID (default: torchvision's "
            "file in the torch hub cache, if there)."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N test clips.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Folder for PNG curves and LSE-C histograms.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps (auto: cuda > mps > cpu).")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """The papers' protocol: dub every test video with another's audio (or its own), score it, tabulate."""
    from lipsync_cli.evaluate.benchmark import BenchmarkOptions, markdown_table, run_benchmark
    from lipsync_cli.evaluate.report import write_json, write_text

    options = BenchmarkOptions(
        checkpoint=checkpoint,
        arch=arch,
        syncnet=syncnet,
        pairs=pairs,
        seed=seed,
        reconstruction=reconstruction,
        device=device,
        inception=inception,
        limit=limit,
    )
    err_console = _console(stderr=True)
    show = not quiet and sys.stderr.isatty()
    counts: dict[str, int] = {}

    def progress(stage: str, advance: int, total: int | None) -> None:
        counts[stage] = counts.get(stage, 0) + advance
        if show:
            err_console.print(f"{stage}: {counts[stage]}/{total}", highlight=False)

    report = run_benchmark(data, test_list, out, options, progress=progress)
    write_json(out / "benchmark.json", report.to_dict())
    md = markdown_table(report)
    write_text(out / "benchmark.md", md)
    if plot:
        from lipsync_cli.evaluate.plots import plot_lse_c_hist, write_plots

        write_plots([p.lse for p in report.pairs if p.lse is not None], plot)
        plot_lse_c_hist(report.real, Path(plot) / "real_lse_c_hist.png", title="LSE-C of the real videos")
    if not quiet:
        _console().print(md, highlight=False)
    _say_failures(report, out, err_console)
    if not quiet:
        err_console.print(f"wrote {out / 'benchmark.json'}, {out / 'benchmark.md'} and the dubbed videos in "
                          f"{out / 'videos'}", highlight=False)


def _say_failures(report, out: Path, err_console) -> None:
    """The clips that were not scored, on stderr (also under --quiet: the table's means leave them out); a run
    that scored no dubbed video is an error naming the first cause."""
    from lipsync_cli.errors import LipsyncError

    failures = report.failures()
    rows = {r["method"]: r for r in report.summary["rows"]}
    gen = report.summary["rows"][-1]
    n = report.summary["test_clips"]
    if failures:
        counts = ", ".join(f"{name} {r['count']} of {r['count'] + r['failed']}" for name, r in rows.items())
        err_console.print(f"warning: not every test clip was scored (scored: {counts}):", highlight=False)
        for clip, why in failures[:10]:
            err_console.print(f"  {clip}: {why}", highlight=False)
        if len(failures) > 10:
            err_console.print(f"  ... {len(failures) - 10} more", highlight=False)
        err_console.print(f"  every row: {out / 'benchmark.json'}", highlight=False)
    if gen["count"] == 0:
        first = f"{failures[0][0]}: {failures[0][1]}" if failures else "no test clip to dub"
        raise LipsyncError(f"no dubbed test video was scored (0 of {n}); first cause: {first}",
                           f"every row in {out / 'benchmark.json'}")
