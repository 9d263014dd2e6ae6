"""CLI commands ``lipsync models`` (the generator architectures) and ``lipsync inspect attention``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lipsync_cli.cli.app import app, console
from lipsync_cli.constants import DEFAULT_FPS, DEFAULT_PADS

inspect_app = typer.Typer(help="Look inside a generator.", no_args_is_help=True)
app.add_typer(inspect_app, name="inspect")


_console = console


@app.command("models")
def models_cmd() -> None:
    """Table of the generator architectures: registry name, parameter count, what it is."""
    from rich.table import Table

    from lipsync_cli.models import ARCHS, INFERENCE_ONLY, MUSETALK_UNET_PARAMETERS, build_generator

    table = Table(title="Generator architectures (--arch)", title_justify="left")
    table.add_column("arch", no_wrap=True)
    table.add_column("parameters", justify="right", no_wrap=True)
    table.add_column("description", overflow="fold")
    for name, spec in ARCHS.items():
        n = sum(p.numel() for p in build_generator(name).parameters())
        table.add_row(name, f"{n / 1e6:.2f} M", spec.description)
    for name, description in INFERENCE_ONLY.items():  # counted from the release, not built (850 M parameters)
        table.add_row(name, f"{MUSETALK_UNET_PARAMETERS / 1e6:.2f} M", description)
    _console().print(table)


def _split_blocks(blocks: Optional[list[str]]) -> Optional[list[str]]:
    if not blocks:
        return None
    return [b.strip() for item in blocks for b in item.split(",") if b.strip()]


@inspect_app.command("attention")
def attention_cmd(
    video: Path = typer.Argument(..., help="Video or still image with a face."),
    audio: Path = typer.Argument(..., help="Speech driving the generator (any file ffmpeg reads)."),
    output: Path = typer.Option(..., "-o", "--output", help="PNG grid to write."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Generator weights with attention."),
    arch: Optional[str] = typer.Option(None, help="attn_wav2lip | lpips_attn_wav2lip (default: from the "
                                                  "checkpoint)."),
    blocks: Optional[list[str]] = typer.Option(None, "--blocks", "-b",
                                               help="Attention blocks to show, repeated or comma-separated "
                                                    "(e.g. enc0,enc3,dec6; default: four across the network; "
                                                    "an unknown name lists the valid ones)."),
    frames: int = typer.Option(4, "--frames", "-n", help="Faces (grid rows), spread over the clip."),
    box: Optional[tuple[int, int, int, int]] = typer.Option(None, help="Fixed face box X1 Y1 X2 Y2 (pixels): "
                                                                         "skips detection."),
    detector: str = typer.Option("s3fd", help="Face detector: s3fd | insightface."),
    detector_weights: Optional[Path] = typer.Option(None, help="Detector weights: s3fd .pth, or an "
                                                                 "insightface pack name / .onnx file."),
    pads: tuple[int, int, int, int] = typer.Option(DEFAULT_PADS, help="Pixels added TOP BOTTOM LEFT RIGHT "
                                                                      "around detected faces."),
    fps: float = typer.Option(DEFAULT_FPS, help="Frame rate assumed for a still image."),
    device: str = typer.Option("cpu", help="cpu | cuda | mps."),
    offline: bool = typer.Option(False, "--offline", help="Never download detector weights."),
) -> None:
    """Overlay the spatial attention maps of chosen blocks on the input faces, as a PNG grid."""
    from lipsync_cli.checkpoint import load_generator
    from lipsync_cli.inspect_attention import attention_names, collect_faces, render_attention_grid, save_png

    model = load_generator(checkpoint, arch=arch, device=device)
    attention_names(model)  # fail before decoding anything when the arch has no attention
    det = None
    if box is None:
        from lipsync_cli.dub import DubOptions, load_dub_detector

        opts = DubOptions(detector=detector, detector_weights=detector_weights,
                          offline=True if offline else None)
        det = load_dub_detector(opts, device)
    sample = collect_faces(video, audio, n_frames=frames, box=box, detector=det, pads=pads, fps=fps,
                           lead=getattr(model, "mel_lead", 0))  # the windows dub would feed these frames
    grid = render_attention_grid(model, sample.faces, sample.mels, _split_blocks(blocks))
    save_png(grid, output)
    shown = ", ".join(map(str, sample.frame_indices))
    _console(stderr=True).print(f"wrote {output}: {len(sample.frame_indices)} face(s) (frames {shown}), "
                                f"{grid.shape[1]}x{grid.shape[0]} px")
