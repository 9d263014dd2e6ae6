"""CLI commands `lipsync dub` and `lipsync detect`."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from lipsync_cli.cli.app import app, console
from lipsync_cli.cli.options import given, with_dub_flags

SPEAKING_HINT = "to score who speaks in the video's own audio, use `lipsync detect --speaking`"


def _console():
    return console(stderr=True)


@contextmanager
def progress_bars(quiet: bool):
    """Yield a ``progress(stage, advance, total)`` callback drawing one rich bar per stage (frames)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    labels = {"detect": "detecting faces", "dub": "dubbing", "enhance": "enhancing mouths"}
    with Progress(TextColumn("{task.description:>22}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[unit]}"), TimeRemainingColumn(), console=_console(),
                  transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, advance: int, total: int | None) -> None:
            if stage not in tasks:
                unit = "bytes" if stage.startswith("download") else "frames"
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total, unit=unit)
            bar.update(tasks[stage], advance=advance, total=total)

        yield progress


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (interpreter start-up included), from Linux's /proc; None
    elsewhere."""
    import os

    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(after_name[19])  # field 22, starttime: clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def startup_line(startup: dict[str, float], before: float | None = None) -> str:
    """'start-up 2.9 s before the first frame: python + CLI 0.40, imports 1.81, ...' from ``DubResult.startup``
    and ``before``, the seconds the process ran before calling dub (None: unknown, left out)."""
    from lipsync_cli.dub import STARTUP_PHASES

    parts = ([f"python + CLI {before:.2f}"] if before is not None else []) + [
        f"{k} {startup[k]:.2f}" for k in STARTUP_PHASES if k in startup]
    total = startup.get("total", 0.0) + (before or 0.0)
    return f"start-up {total:.2f} s before the first frame: " + ", ".join(parts)


@app.command()
@with_dub_flags()
def dub(
    video: Path = typer.Argument(..., help="Video (any format ffmpeg reads) or still image (jpg/png/webp)."),
    audio: Optional[Path] = typer.Argument(None, help="Speech: any audio file ffmpeg reads, or a video's audio "
                                                      "track (not needed when each --speaker has their own)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output video (.mp4, .mov, .mkv: the container), "
                                                           "written only on success."),
    *,
    offline: bool = typer.Option(False, "--offline", help="Never download weights (also LIPSYNC_OFFLINE=1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    stats: bool = typer.Option(False, "--stats", help="End with each stage's busy time and each queue's "
                                                     "occupancy: which stage limits the run."),
    **flags,
) -> None:
    """Re-draw the speaker's mouth in VIDEO to match AUDIO and write the result to -o."""
    from lipsync_cli.batch.manifest import build_options
    from lipsync_cli.dub import dub as run_dub

    # the options of cli/options.py's table, by name: the same conversion as a manifest row's columns
    opts = build_options({**given(flags), **({"offline": True} if offline else {})})
    opts.validate(output)  # every option mistake is reported before the video is opened
    console = _console()

    def notify(msg: str) -> None:
        console.print(msg, highlight=False)

    before = seconds_since_process_start()  # the interpreter, the CLI's imports and parsing
    with progress_bars(quiet) as progress:
        result = run_dub(video, audio, output, opts, progress=progress, notify=notify)
    if quiet:
        return
    for line in result.summary_lines():
        console.print(line, highlight=False, markup=False)
    console.print(startup_line(result.startup, before), highlight=False)
    if result.pauses:
        console.print(f"--silence {opts.silence}: {len(result.pauses)} pause(s), "
                      f"{sum(b - a for a, b in result.pauses)} frames", highlight=False)
    if stats:
        for line in result.stats_lines():
            console.print(line, highlight=False, markup=False)


@app.command()
@with_dub_flags(only=("detector", "detector_weights", "det_size", "detect_every", "cut_threshold", "device",
                      "speakers", "recognition_weights"))
def detect(
    video: Path = typer.Argument(..., help="Video or still image."),
    output: Path = typer.Option(..., "-o", "--output", help="Track file to write (JSON)."),
    *,
    identity: bool = typer.Option(False, "--identity", help="Store face embeddings (ArcFace) in the track, for "
                                                           "`lipsync dub --track --ref-face`."),
    speaking: bool = typer.Option(False, "--speaking", help="Score who speaks in the video's own audio (SyncNet v2) "
                                                           "and store the scores, for `dub --speaker auto`."),
    ref_face: Optional[list[str]] = typer.Option(
        None, metavar="PHOTO|VIDEO@SECONDS",
        help="Reference faces (photo or VIDEO@SECONDS): the preview shows each face's distance to them."),
    syncnet: Optional[Path] = typer.Option(None, help="SyncNet v2 weights for --speaking (default: the registry's "
                                                      "syncnet_v2)."),
    preview: Optional[Path] = typer.Option(None, help="Also write OUT.mp4: every face track's box, id, identity "
                                                      "distance and speaking score drawn on the frames."),
    offline: bool = typer.Option(False, "--offline", help="Never download weights (also LIPSYNC_OFFLINE=1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary line."),
    **flags,
) -> None:
    """Detect the faces of every frame once and save them, for `lipsync dub --track` (one video, many dubs)."""
    from lipsync_cli.analysis import analyse
    from lipsync_cli.batch.manifest import build_options
    from lipsync_cli.device import resolve_device
    from lipsync_cli.errors import BadOption, InputNotFound
    from lipsync_cli.media.probe import probe

    if not video.is_file():
        raise InputNotFound(f"video file not found: {video}")
    if output.suffix.lower() != ".json":
        raise BadOption(f"track output {output} should end in .json")
    speakers_file = flags.pop("speakers")
    recognition_weights = flags.pop("recognition_weights")
    if speakers_file is not None and str(speakers_file).startswith("-"):  # `--speakers --preview x.mp4`
        raise BadOption(f"--speakers takes a speakers.yaml (as in `lipsync dub`), got {speakers_file}",
                        SPEAKING_HINT)
    opts = build_options({**given(flags), **({"offline": True} if offline else {})})
    device = flags["device"]
    setup = None
    if identity or speaking or ref_face or speakers_file:  # checked before the detection pass
        from lipsync_cli.speakers import Reference, SpeakerSetup, SpeakerSpec

        top = {"recognition_weights": recognition_weights, "syncnet": syncnet}
        if speakers_file is not None:
            setup = SpeakerSetup.from_yaml(speakers_file, **top)
        else:
            setup = SpeakerSetup(speakers=tuple(SpeakerSpec(reference=Reference.parse(r), name=r)
                                                for r in ref_face or ()), **top)
        for spec in setup.speakers:
            if spec.reference is not None:
                spec.reference.validate()
    if preview is not None and preview.suffix.lower() not in (".mp4", ".mov", ".mkv", ".m4v"):
        raise BadOption(f"preview {preview} should end in .mp4")
    console = _console()
    with progress_bars(quiet) as progress:  # faces, cuts, embeddings, scores: one decode (lipsync_cli.analysis)
        info = probe(video)
        analysis = analyse(video, info, opts, device=resolve_device(device), setup=setup, identity=identity,
                           speaking=speaking, progress=progress, notify=lambda m: console.print(m, highlight=False))
    track, distances = analysis.track, analysis.distances
    track.save(output)
    if preview is not None:
        from lipsync_cli.faces.preview import write_preview

        write_preview(video, track, preview, distances, info=info)
    if not quiet:
        with_face = sum(1 for f in track.faces if len(f))
        console.print(f"wrote {output}: {len(track)} frames, {with_face} with at least one face"
                      + (f"; preview {preview}" if preview is not None else ""))
