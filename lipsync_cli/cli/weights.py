"""CLI commands: ``lipsync weights list | download | verify | import | export``.

Each command parses its options and calls one library function of ``lipsync_cli.weights`` or
``lipsync_cli.checkpoint``; domain errors propagate to ``cli.main``, which prints one line and exits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lipsync_cli.cli.app import app, console

weights_app = typer.Typer(
    help="Known weight files: list them, download (resumable, checksummed), verify, import and export.",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


_console = console


@weights_app.command("list")
def list_cmd() -> None:
    """Table of the known weights: kind, the file name to use, size, where the file is (or that it is missing, or
    of the wrong size, as `verify` would say), licence."""
    from rich.markup import escape
    from rich.table import Table

    from lipsync_cli import weights

    table = Table(title="Known weights", title_justify="left")
    table.add_column("name", no_wrap=True)
    for col in ("kind", "file", "size", "present", "licence"):
        # the long pack paths (musetalk/...) fold first, so where a file was found keeps its line
        table.add_column(col, overflow="fold", max_width=30 if col == "file" else None)
    for row in weights.status_rows():
        if row["path"] is None:
            where = "[red]missing[/]"
        elif row["size"] is not None and row["found_size"] != row["size"]:
            where = f"[red]wrong size[/] {escape(str(row['path']))} ({weights.human_size(row['found_size'])})"
        else:
            where = f"[green]yes[/] {escape(str(row['path']))}"
        licence = row["licence"].split(" (")[0]  # the full note is in `download` and weights/README.md
        table.add_row(row["name"], row["kind"], escape(row["file_name"]), weights.human_size(row["size"]), where,
                      licence)
    out = _console()
    out.print(table)
    out.print("a file of the 'file' name in one of these folders is used (`lipsync weights verify` checks its "
              "sha256); searched, in order: " + ", ".join(str(d) for d in weights.weights_dirs())
              + f" (downloads go to {weights.user_cache_dir()}; set LIPSYNC_HOME to change it); "
              + f"insightface packs also in {weights.insightface_root()} ($INSIGHTFACE_HOME), "
              + f"torchvision files also in {weights.torch_hub_dir() / 'checkpoints'} ($TORCH_HOME), "
              + "where they are downloaded to")
    out.print("Wav2Lip weights and models trained on LRS2 are for non-commercial research use only.")


@weights_app.command("download")
def download_cmd(
    names: Annotated[list[str], typer.Argument(
        help="Registry names (see `lipsync weights list`), or a group: musetalk (its 7 files).")],
    dir: Annotated[Path | None, typer.Option(
        "--dir", help="Folder to write into (default: the user cache; insightface: $INSIGHTFACE_HOME/models/"
                      "<pack>; torchvision's LPIPS trunks: $TORCH_HOME/hub/checkpoints)."
    )] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Download weights: resumes partial files (HTTP Range), tries mirrors, verifies the sha256."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from lipsync_cli import weights
    from lipsync_cli.errors import DownloadError

    specs = [weights.get_spec(n) for n in weights.expand_names(names)]  # unknown names fail before any fetch
    if weights.is_offline():
        raise DownloadError("LIPSYNC_OFFLINE is set: not downloading", "unset LIPSYNC_OFFLINE to download")
    err = _console(stderr=True)
    for spec in specs:
        target = weights.folder_in(spec, dir) if dir is not None else weights.default_dir(spec)
        urls = weights.urls_for(spec)
        source = urls[0] if urls else "?"
        err.print(f"{spec.name}: {spec.file}, {weights.human_size(spec.size)} from {source} into {target}")
        err.print(f"  licence: {spec.licence}")
        if spec.sha256 is None:
            err.print(f"  [yellow]unverified[/]: {spec.unverified}")
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=err, disable=quiet, transient=False) as bar:
            task = bar.add_task(spec.name, total=spec.size)

            def progress(done: int, total: int | None, _task=task, _bar=bar) -> None:
                _bar.update(_task, completed=done, total=total)

            path = weights.download(spec.name, target, progress=progress, notify=err.print)
        err.print(f"  [green]ok[/] {path} " + ("(sha256 verified)" if spec.sha256 else "(no checksum to verify)"))


@weights_app.command("verify")
def verify_cmd(
    names: Annotated[list[str] | None, typer.Argument(help="Registry names (default: all).")] = None,
) -> None:
    """Hash every present weight file and report mismatches (exit code 1 if any)."""
    from rich.table import Table

    from lipsync_cli import weights

    names = weights.expand_names(names or [])
    for n in names:
        weights.get_spec(n)
    results = weights.verify(names or None)
    out = _console()
    if not results:
        out.print("no known weight files are present (see `lipsync weights list`)")
        return
    table = Table(title="Weight files", title_justify="left")
    for col in ("name", "path", "result"):
        table.add_column(col, overflow="fold")
    for r in results:
        result = ("[green]ok[/]" + (f" ({r.reason})" if r.reason else "")) if r.ok else f"[red]MISMATCH[/] {r.reason}"
        table.add_row(r.name, str(r.path), result)
    out.print(table)
    bad = [r for r in results if not r.ok]
    if bad:
        _console(stderr=True).print(
            f"{len(bad)} file(s) do not match the registry: delete them and run "
            f"`{weights.download_command(sorted({r.name for r in bad}))}`")
        raise typer.Exit(1)


@weights_app.command("import")
def import_cmd(
    upstream: Annotated[Path, typer.Argument(help="Upstream checkpoint (wav2lip.pth, ...).")],
    out: Annotated[Path, typer.Argument(help="Output file of ours (.pt, or .safetensors for weights only).")],
    arch: Annotated[str | None, typer.Option("--arch", help="Expected architecture (default: detected).")
                    ] = None,
) -> None:
    """Convert an upstream checkpoint into our self-describing format (dub loads it without --arch)."""
    from lipsync_cli.checkpoint import KIND_NAMES, import_checkpoint

    ckpt = import_checkpoint(upstream, out, arch=arch)
    kind = ckpt.get("kind")
    _console().print(f"wrote {out}: {KIND_NAMES.get(kind, kind)} (arch {ckpt.get('arch')}, "
                     f"{len(ckpt['state_dict'])} tensors)")


@weights_app.command("export")
def export_cmd(
    ckpt: Annotated[Path, typer.Argument(help="A checkpoint (ours, e.g. from training, or upstream).")],
    out: Annotated[Path, typer.Argument(help="Output: .safetensors (config in its metadata) or .pt.")],
) -> None:
    """Write an inference-only file: weights + arch + config, no optimizer or training state."""
    from lipsync_cli.checkpoint import KIND_NAMES, export_checkpoint

    saved = export_checkpoint(ckpt, out)
    kind = saved.get("kind")
    size = out.stat().st_size
    _console().print(f"wrote {out}: {KIND_NAMES.get(kind, kind)} (arch {saved.get('arch')}, "
                     f"{len(saved['state_dict'])} tensors, {size / 1e6:.1f} MB)")
