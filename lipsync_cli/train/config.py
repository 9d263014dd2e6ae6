"""Training configuration: one frozen dataclass, its defaults, its validator, and TOML/YAML loading.

Precedence (lowest first): the dataclass defaults, a ``--config`` file, explicit command-line flags. The
resolved config is written into the run directory as ``config.yaml`` so ``--config RUN/config.yaml`` repeats a
run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipsync_cli.device import PRECISIONS
from lipsync_cli.errors import BadOption, InputNotFound

log = logging.getLogger(__name__)

KINDS = ("syncnet", "generator")
# options of earlier versions, skipped with a warning in config files (their RUN/config.yaml hold them)
REMOVED = {"keep_last": "last.pt and best.pt are kept; keep_every N keeps the weights of every Nth step"}
LPIPS_NETS = ("alex", "vgg")

# Wav2Lip's loss weights: L = (1 - a - b) * L1 + a * sync + b * (GAN or LPIPS).
DEFAULT_SYNC_WEIGHT = 0.03
DEFAULT_GAN_WEIGHT = 0.07
DEFAULT_SYNC_THRESHOLD = 0.75  # eval sync loss below which ``--sync-weight auto`` switches the sync loss on
DEFAULT_NEG_MIN_OFFSET = 5  # frames: negatives of the expert are at least this far off-sync (0.2 s at 25 fps)


def default_workers() -> int:
    from lipsync_cli.device import cpu_count

    return min(4, cpu_count())


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Units: steps are optimizer steps, lr per step, fps frames/s."""

    kind: str = "generator"  # "syncnet" (the lip-sync expert) or "generator"
    arch: str = "wav2lip"  # generator registry name (ignored for syncnet)
    data: str = ""  # preprocessed root: <data>/<speaker>/<clip>/<i>.jpg + audio.wav
    train_list: str = ""  # file of "speaker/clip" lines, relative to ``data``
    val_list: str = ""
    out: str = ""  # run directory
    syncnet: str | None = None  # the frozen expert (generator training)
    init: str | None = None  # start the model from this checkpoint (weights only)
    resume: str | None = None  # continue this run exactly (checkpoint path or run directory)
    steps: int = 200_000
    batch_size: int = 16
    lr: float = 1e-4
    disc_lr: float = 1e-4
    eval_every: int = 1000  # steps; also where checkpoints are written
    eval_batches: int = 20  # batches of the val list per eval (a fixed set, the same at every eval)
    # also keep the weights of every Nth step as step_XXXXXXX.pt (a multiple of eval_every); 0: only last.pt
    # (the whole training state) and best.pt (weights)
    keep_every: int = 0
    log_every: int = 10  # steps between progress/TensorBoard scalar updates
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"...
    # DataLoader worker processes (JPEG decoding): 4, at most the cores this process may use; 0 decodes in the
    # main process
    workers: int = field(default_factory=lambda: default_workers())
    precision: str = "auto"  # see device.resolve_precision(training=True): bf16/fp16 on CUDA, fp32 elsewhere
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    sync_weight: str | float = "auto"  # "auto" or a number used from step 0
    sync_weight_value: float = DEFAULT_SYNC_WEIGHT  # ``a`` once auto switches on
    sync_threshold: float = DEFAULT_SYNC_THRESHOLD
    gan: bool = True  # wav2lip / attn_wav2lip: train with the visual-quality discriminator
    gan_weight: float = DEFAULT_GAN_WEIGHT  # ``b``: GAN or LPIPS weight
    disc_init: str | None = None  # optional visual_quality_disc.pth to start the discriminator from
    lpips_net: str = "alex"
    lpips_pretrained: bool = True  # False: random LPIPS trunk (tests; needs no torchvision download)
    neg_min_offset: int = DEFAULT_NEG_MIN_OFFSET
    fps: float = 25.0  # frame rate of the preprocessed data
    mel_cache: bool = True  # cache each clip's mel as mel.npy beside audio.wav (and in memory)
    tensorboard: bool = True
    arch_config: dict = field(default_factory=dict)  # constructor overrides for the model

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sync_weight_mode(cfg: TrainConfig) -> tuple[bool, float]:
    """(auto, a): auto switches a on when the eval sync loss falls below the threshold; otherwise a from step
    0."""
    if isinstance(cfg.sync_weight, str) and cfg.sync_weight.strip().lower() == "auto":
        return True, cfg.sync_weight_value
    return False, float(cfg.sync_weight)


def validate(cfg: TrainConfig) -> TrainConfig:
    """The one place cross-option rules live. Returns ``cfg`` or raises BadOption / InputNotFound."""
    from lipsync_cli.models import ARCHS, INFERENCE_ONLY

    if cfg.kind not in KINDS:
        raise BadOption(f"unknown training kind {cfg.kind!r}", f"choose one of: {', '.join(KINDS)}")
    if cfg.kind == "generator" and cfg.arch in INFERENCE_ONLY:
        raise BadOption(f"--arch {cfg.arch} is not trainable here (lipsync train trains the Wav2Lip family; MuseTalk "
                        "runs from its released weights)", "dub with it: lipsync dub --arch musetalk")
    if cfg.kind == "generator" and cfg.arch not in ARCHS:
        raise BadOption(f"unknown architecture {cfg.arch!r}", f"choose one of: {', '.join(ARCHS)}")
    for name in ("data", "train_list", "val_list", "out"):
        if not getattr(cfg, name):
            raise BadOption(f"--{name.replace('_', '-')} is required")
    if not Path(cfg.data).is_dir():
        raise InputNotFound(f"data directory not found: {cfg.data}", "run `lipsync prepare` first")
    for name in ("train_list", "val_list"):
        if not Path(getattr(cfg, name)).is_file():
            raise InputNotFound(f"--{name.replace('_', '-')} file not found: {getattr(cfg, name)}")
    for name in ("syncnet", "init", "disc_init"):
        p = getattr(cfg, name)
        if p and not Path(p).is_file():
            raise InputNotFound(f"--{name.replace('_', '-')} checkpoint not found: {p}")
    if cfg.kind == "generator" and not cfg.syncnet:
        raise BadOption(
            "generator training needs the lip-sync expert: --syncnet EXPERT",
            "train one with `lipsync train syncnet` or pass lipsync_expert.pth",
        )
    positive = {
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "eval_every": cfg.eval_every,
        "eval_batches": cfg.eval_batches,
        "log_every": cfg.log_every,
    }
    for name, value in positive.items():
        if int(value) < 1:
            raise BadOption(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if cfg.lr <= 0 or cfg.disc_lr <= 0:
        raise BadOption(f"learning rates must be > 0, got lr={cfg.lr} disc_lr={cfg.disc_lr}")
    if cfg.keep_every < 0 or cfg.workers < 0 or cfg.grad_clip < 0:
        raise BadOption("--keep-every, --workers and --grad-clip must be >= 0")
    if cfg.keep_every % cfg.eval_every:
        raise BadOption(f"--keep-every {cfg.keep_every} is not a multiple of --eval-every {cfg.eval_every}: "
                        "checkpoints are written at evals", f"give --keep-every {cfg.eval_every} or a multiple of it")
    if cfg.precision not in PRECISIONS:
        raise BadOption(f"unknown precision {cfg.precision!r}", f"choose one of: {', '.join(PRECISIONS)}")
    if cfg.lpips_net not in LPIPS_NETS:
        raise BadOption(f"unknown --lpips-net {cfg.lpips_net!r}", f"choose one of: {', '.join(LPIPS_NETS)}")
    try:
        _auto, a = sync_weight_mode(cfg)
    except (TypeError, ValueError):
        raise BadOption(f"--sync-weight must be 'auto' or a number, got {cfg.sync_weight!r}") from None
    b = cfg.gan_weight if (cfg.arch == "lpips_attn_wav2lip" or cfg.gan) else 0.0
    if not (0 <= a and 0 <= b and a + b < 1):
        raise BadOption(f"loss weights must satisfy 0 <= a, b and a + b < 1 (a={a}, b={b})")
    if not 0 < cfg.sync_threshold:
        raise BadOption(f"--sync-threshold must be > 0, got {cfg.sync_threshold}")
    if cfg.neg_min_offset < 1:
        raise BadOption(f"neg_min_offset must be >= 1 frame, got {cfg.neg_min_offset}")
    if cfg.fps <= 0:
        raise BadOption(f"--fps must be > 0, got {cfg.fps}")
    return cfg


def _tomllib():
    """The TOML parser: ``tomllib`` (Python 3.11+), or ``tomli`` (the same parser; a dependency on 3.10)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise BadOption("reading a .toml config needs Python 3.11+ or the tomli package",
                            "pip install tomli, or pass a YAML config") from None
    return tomllib


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (anything else) file of TrainConfig fields; dashes in keys become
    underscores.

    A ``[train]`` table / ``train:`` mapping, when present, is used instead of the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    toml = _tomllib() if path.suffix.lower() == ".toml" else None
    try:
        if toml is not None:
            raw = toml.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text) or {}
    except Exception as err:  # noqa: BLE001  (tomllib and yaml have their own error types)
        raise BadOption(f"cannot parse config file {path}: {str(err).splitlines()[0][:200]}") from None
    if not isinstance(raw, dict):
        raise BadOption(f"config file {path} must hold a mapping of options")
    if isinstance(raw.get("train"), dict):
        raw = raw["train"]
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name in REMOVED:  # the config.yaml of a run made by an older version
            log.warning("%s: option %r is no longer used (%s)", path, key, REMOVED[name])
            continue
        if name not in known:
            raise BadOption(f"unknown option {key!r} in {path}", f"known: {', '.join(sorted(known))}")
        out[name] = value
    return out


def make_config(config_file: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < ``config_file`` < ``overrides`` (``None`` values in overrides mean "not given")."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_config_file(config_file))
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise BadOption(f"unknown training option(s): {', '.join(sorted(unknown))}")
    return TrainConfig(**values)


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomic rename)."""
    import yaml

    from lipsync_cli.files import atomic_write

    atomic_write(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
