"""CLI commands `lipsync prepare` and `lipsync train syncnet|generator`: parse, validate, call the library."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from lipsync_cli.cli.app import app, console
from lipsync_cli.cli.options import with_dub_flags

train_app = typer.Typer(
    help="Train the SyncNet lip-sync expert or a generator of the Wav2Lip family on a prepared dataset (see "
         "`lipsync prepare`). MuseTalk (`lipsync dub --arch musetalk`) is not trainable here: it runs from its "
         "released weights.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")



def _console():
    return console(stderr=True)


# --- prepare -----------------------------------------------------------------------------------------------


@app.command()
@with_dub_flags(only=("detector", "detector_weights", "det_size"))  # dub's: the same detector, the same crops
def prepare(
    lrs2_root: Path = typer.Argument(..., help="LRS2 folder: main/<speaker>/<clip>.mp4 and train/val/test.txt."),
    out: Path = typer.Argument(..., help="Output: <speaker>/<clip>/<i>.jpg + audio.wav, and filelists/."),
    workers: int = typer.Option(1, help="Clips processed in parallel (processes; GPUs shared round-robin)."),
    *,
    box: Optional[tuple[int, int, int, int]] = typer.Option(
        None, help="Fixed face box X1 Y1 X2 Y2 (source pixels) for every frame, instead of a detector."
    ),
    device: str = typer.Option("auto", help="auto (GPUs when present) | cpu | cuda | cuda:N."),
    fps: float = typer.Option(25.0, help="Resample every clip to this frame rate (frames/s)."),
    resample: bool = typer.Option(True, help="--no-resample keeps each clip's own frame rate."),
    pads: tuple[int, int, int, int] = typer.Option((0, 10, 0, 0), help="Box padding: top bottom left right (px)."),
    pretrain: bool = typer.Option(False, help="Also prepare LRS2_ROOT/pretrain (into OUT/pretrain/)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N clips (a quick trial)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    **flags,
) -> None:
    """Preprocess LRS2 into Wav2Lip's layout (face crops + audio.wav + filelists). Resumable: rerun to
    continue."""
    from lipsync_cli.train.prepare import FAILURES_FILE, PrepareOptions
    from lipsync_cli.train.prepare import prepare as run_prepare

    options = PrepareOptions(
        workers=workers,
        detector=flags["detector"],
        detector_weights=None if flags["detector_weights"] is None else str(flags["detector_weights"]),
        det_size=flags["det_size"],
        box=tuple(box) if box else None,
        device=device,
        fps=fps if resample else None,
        pads=tuple(pads),
        pretrain=pretrain,
    )
    console = _console()
    show = not quiet and sys.stderr.isatty()
    if show:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("preparing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("clips"),
            TimeRemainingColumn(),
            console=console,
        )
        task = bar.add_task("clips", total=None)

        def progress(done: int, total: int, name: str, status: str) -> None:
            bar.update(task, completed=done, total=total)

        with bar:
            report = run_prepare(lrs2_root, out, options, progress=progress, limit=limit)
    else:
        report = run_prepare(lrs2_root, out, options, limit=limit)
    console.print(
        f"prepared {len(report.prepared)} clips ({report.frames} face crops), "
        f"{len(report.skipped)} already done, {len(report.failed)} failed"
    )
    for name, why in report.failed[:10]:
        console.print(f"  failed {name}: {why}")
    if report.failed:
        console.print(f"  full list: {out / FAILURES_FILE}")
    for split, path in sorted(report.filelists.items()):
        console.print(f"  {split}: {path}")


# --- train -------------------------------------------------------------------------------------------------


def _show_progress(quiet: bool) -> bool:
    """A progress bar only on a terminal, and under torchrun only in rank 0 (every rank shares the terminal)."""
    from lipsync_cli.train.core import process_rank

    return not quiet and sys.stderr.isatty() and process_rank() == 0


def _run_training(kind: str, **flags) -> None:
    """Build the config (defaults < --config file < flags), run it with a progress line, report where it
    went. Under torchrun only rank 0 prints."""
    from lipsync_cli.train.config import make_config
    from lipsync_cli.train.core import process_rank, train

    config_file = flags.pop("config", None)
    quiet = flags.pop("quiet", False)
    for key in ("data", "train_list", "val_list", "out", "syncnet", "init", "resume", "disc_init"):
        if flags.get(key) is not None:
            flags[key] = str(flags[key])
    if flags.get("resume") and not config_file and not flags.get("data"):
        from lipsync_cli.train.core import resume_config

        # `--resume RUN` alone: the run's saved config, with any flag given now on top (e.g. more --steps)
        resume = flags.pop("resume")
        cfg = resume_config(resume, **flags)
    else:
        cfg = make_config(config_file, kind=kind, **flags)
    console = _console()
    main_rank = process_rank() == 0
    quiet = quiet or not main_rank
    show = _show_progress(quiet)
    state: dict = {}

    def on_event(ev: dict) -> None:
        if ev["event"] == "eval":
            m = ", ".join(f"{k} {v:.4f}" for k, v in ev["metrics"].items())
            line = f"step {ev['step']}: val {m}"
            if state.get("bar") is not None:
                state["bar"].console.print(line)
            elif not quiet:
                console.print(line)
        elif ev["event"] == "step" and state.get("bar") is not None:
            losses = " ".join(f"{k} {v:.4f}" for k, v in ev["losses"].items())
            state["bar"].update(
                state["task"],
                completed=ev["step"],
                total=ev["steps"],
                info=f"{losses} | {ev['samples_per_s']:.1f} samples/s",
            )
        elif ev["event"] == "start" and state.get("bar") is not None:
            state["bar"].update(state["task"], completed=ev["step"], total=ev["steps"])

    if show:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn(f"{kind}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
        ) as bar:
            state["bar"], state["task"] = bar, bar.add_task(kind, total=cfg.steps, info="")
            result = train(cfg, on_event)
    else:
        result = train(cfg, on_event)
    if result.interrupted:
        if main_rank:
            console.print(
                f"stopped at step {result.step}: saved {result.last}; continue with --resume {result.run_dir}"
            )
        # as a shell reports the signal: 143 for SIGTERM (torchrun's agent, a scheduler), 130 for Ctrl-C
        raise typer.Exit(128 + int(result.signal or signal.SIGINT))
    if not quiet:
        console.print(f"done: step {result.step}, best eval loss {result.best_loss:.4f}")
        console.print(f"  {result.last}\n  {result.best}\n  {result.run_dir / 'metrics.jsonl'}")


_DATA = typer.Option(None, "--data", help="Prepared dataset root (from `lipsync prepare`).")
_TRAIN = typer.Option(None, "--train-list", help="Filelist of speaker/clip lines to train on.")
_VAL = typer.Option(None, "--val-list", help="Filelist to evaluate on.")
_OUT = typer.Option(None, "--out", help="Run directory: last.pt, best.pt, step_*.pt (--keep-every), metrics.jsonl, "
                                        "tb/.")
_CONFIG = typer.Option(None, "--config", help="TOML/YAML file of options (flags override it).")
_RESUME = typer.Option(None, "--resume", help="Continue a run exactly: RUN directory or its last.pt.")
_STEPS = typer.Option(None, "--steps", help="Total optimizer steps (default 200000).")
_BS = typer.Option(None, "--batch-size", help="Samples per step per process (default 16).")
_LR = typer.Option(None, "--lr", help="Learning rate (default 1e-4).")
_EVAL = typer.Option(None, "--eval-every", help="Steps between evals and checkpoints (default 1000).")
_EVALB = typer.Option(None, "--eval-batches", help="Batches of the val list per eval (default 20).")
_KEEP = typer.Option(None, "--keep-every", help="Also keep the weights of every Nth step as step_*.pt, N a multiple "
                                                "of --eval-every (default 0: last.pt and best.pt only).")
_SEED = typer.Option(None, "--seed", help="Seed of the init and of the sample order (default 0).")
_DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (torchrun: one GPU per process).")
_WORKERS = typer.Option(None, "--workers", help="DataLoader processes decoding JPEGs (default 4, at most the cores "
                                                       "this process may use).")
_PREC = typer.Option(None, "--precision", help="auto | fp32 | fp16 | bf16 (mixed precision on GPU).")
_CLIP = typer.Option(None, "--grad-clip", help="Max gradient norm, 0 disables (default 1.0).")
_TB = typer.Option(None, "--tensorboard/--no-tensorboard", help="TensorBoard logs in RUN/tb (default on).")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress line.")


@train_app.command("syncnet")
def train_syncnet(
    data: Optional[Path] = _DATA,
    train_list: Optional[Path] = _TRAIN,
    val_list: Optional[Path] = _VAL,
    out: Optional[Path] = _OUT,
    config: Optional[Path] = _CONFIG,
    resume: Optional[str] = _RESUME,
    init: Optional[Path] = typer.Option(None, "--init", help="Start from an expert (e.g. lipsync_expert.pth)."),
    steps: Optional[int] = _STEPS,
    batch_size: Optional[int] = _BS,
    lr: Optional[float] = _LR,
    eval_every: Optional[int] = _EVAL,
    eval_batches: Optional[int] = _EVALB,
    keep_every: Optional[int] = _KEEP,
    seed: Optional[int] = _SEED,
    device: Optional[str] = _DEVICE,
    workers: Optional[int] = _WORKERS,
    precision: Optional[str] = _PREC,
    grad_clip: Optional[float] = _CLIP,
    neg_min_offset: Optional[int] = typer.Option(
        None, "--neg-min-offset", help="Frames negatives are at least off-sync by (default 5)."
    ),
    tensorboard: Optional[bool] = _TB,
    quiet: bool = _QUIET,
) -> None:
    """Train the SyncNet_color lip-sync expert (checkpoints load where lipsync_expert.pth does)."""
    _run_training("syncnet", **{k: v for k, v in locals().items()})


@train_app.command("generator")
def train_generator(
    arch: Optional[str] = typer.Option(None, "--arch", help="wav2lip | attn_wav2lip | lpips_attn_wav2lip "
                                                            "(musetalk is not trainable here)."),
    data: Optional[Path] = _DATA,
    train_list: Optional[Path] = _TRAIN,
    val_list: Optional[Path] = _VAL,
    syncnet: Optional[Path] = typer.Option(None, "--syncnet", help="The frozen lip-sync expert checkpoint."),
    out: Optional[Path] = _OUT,
    config: Optional[Path] = _CONFIG,
    resume: Optional[str] = _RESUME,
    init: Optional[Path] = typer.Option(
        None, "--init", help="Start from a generator (e.g. wav2lip.pth for attn_wav2lip)."
    ),
    steps: Optional[int] = _STEPS,
    batch_size: Optional[int] = _BS,
    lr: Optional[float] = _LR,
    eval_every: Optional[int] = _EVAL,
    eval_batches: Optional[int] = _EVALB,
    keep_every: Optional[int] = _KEEP,
    seed: Optional[int] = _SEED,
    device: Optional[str] = _DEVICE,
    workers: Optional[int] = _WORKERS,
    precision: Optional[str] = _PREC,
    grad_clip: Optional[float] = _CLIP,
    sync_weight: Optional[str] = typer.Option(
        None,
        "--sync-weight",
        help="'auto' (0 until eval sync < threshold, then 0.03) or a number from step 0.",
    ),
    sync_threshold: Optional[float] = typer.Option(
        None, "--sync-threshold", help="Eval sync loss that switches auto on (0.75)."
    ),
    gan: Optional[bool] = typer.Option(
        None, "--gan/--no-gan", help="wav2lip/attn_wav2lip: visual-quality GAN (default on)."
    ),
    gan_weight: Optional[float] = typer.Option(None, "--gan-weight", help="b: GAN or LPIPS weight (0.07)."),
    disc_init: Optional[Path] = typer.Option(
        None, "--disc-init", help="Start the discriminator from visual_quality_disc.pth."
    ),
    lpips_net: Optional[str] = typer.Option(None, "--lpips-net", help="lpips_attn_wav2lip: alex | vgg."),
    tensorboard: Optional[bool] = _TB,
    quiet: bool = _QUIET,
) -> None:
    """Train a generator with L1 + the frozen expert's sync loss + GAN (or LPIPS for lpips_attn_wav2lip)."""
    flags = dict(locals())
    sw = flags.get("sync_weight")
    if sw is not None and sw.strip().lower() != "auto":
        try:
            flags["sync_weight"] = float(sw)
        except ValueError:
            raise typer.BadParameter(f"--sync-weight must be 'auto' or a number, got {sw!r}") from None
    _run_training("generator", **flags)


@train_app.command("export")
def train_export(
    checkpoint: Path = typer.Argument(..., help="RUN/best.pt or RUN/last.pt of `lipsync train`."),
    output: Path = typer.Argument(..., help="File to write, e.g. lipsync_expert.pth or wav2lip.pth."),
    disc: bool = typer.Option(False, "--disc", help="Export the GAN discriminator instead of the model."),
) -> None:
    """Write a trained model in the upstream release layout (loads where the official .pth files do)."""
    from lipsync_cli.train.export import export_upstream

    out = export_upstream(checkpoint, output, part="disc" if disc else "model")
    _console().print(f"wrote {out}")
