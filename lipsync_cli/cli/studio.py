"""CLI command `lipsync inspect-audio`: the speech activity that `lipsync dub --silence` acts on."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lipsync_cli.cli.app import app, console
from lipsync_cli.constants import DEFAULT_FPS


@app.command("inspect-audio")
def inspect_audio(
    audio: Path = typer.Argument(..., help="Speech track (the dialogue stem): any file ffmpeg reads."),
    fps: float = typer.Option(DEFAULT_FPS, help="Video frame rate the decisions are made at (one per frame)."),
    video: Optional[Path] = typer.Option(None, help="Take the frame rate from this video instead of --fps."),
    vad: str = typer.Option("silero", help="silero (the packaged Silero VAD network) | energy (level alone)."),
    min_pause: float = typer.Option(0.3, help="Seconds: shorter pauses stay speech (a breath)."),
    plot: Optional[Path] = typer.Option(None, help="Also write a PNG: the waveform with the pauses shaded."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the spans as JSON."),
) -> None:
    """Print the speech and pause spans of AUDIO, one decision per video frame, as `lipsync dub` sees them."""
    import json

    from lipsync_cli.audio import load_audio, n_output_frames
    from lipsync_cli.constants import SAMPLE_RATE
    from lipsync_cli.errors import BadOption
    from lipsync_cli.vad import VadOptions, format_spans, speech_activity

    options = VadOptions(method=vad, min_pause=min_pause)
    options.validate()
    if video is not None:
        from lipsync_cli.media.probe import probe

        fps = float(probe(video).fps)
    if not (0 < fps <= 240):
        raise BadOption(f"--fps must be in (0, 240], got {fps}")
    if plot is not None and plot.suffix.lower() != ".png":
        raise BadOption(f"--plot {plot} should end in .png")
    wav = load_audio(audio)
    n = n_output_frames(len(wav), fps)
    activity = speech_activity(wav, n, fps, options)
    out = console()
    for line in format_spans(activity):
        out.print(line)
    pauses = activity.pauses()
    out.print(f"{len(pauses)} pause(s), {sum(b - a for a, b in pauses)} of {n} frames at {fps:g} fps; "
              f"{activity.method} VAD {activity.seconds:.2f} s for {len(wav) / SAMPLE_RATE:.1f} s of audio")
    if json_out is not None:
        json_out.write_text(json.dumps({"fps": fps, "frames": n, "method": activity.method,
                                        "speech": activity.speech_spans(), "pauses": pauses}, indent=1))
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(12, 2.5))
        t = [i / SAMPLE_RATE for i in range(0, len(wav), 40)]
        ax.plot(t, wav[::40], lw=0.4, color="0.3")
        for a, b in pauses:
            ax.axvspan(a / fps, b / fps, color="tab:orange", alpha=0.3)
        ax.set_xlabel("seconds")
        ax.set_title(f"{audio.name}: pauses shaded ({activity.method})")
        fig.tight_layout()
        fig.savefig(plot, dpi=100)
        plt.close(fig)
