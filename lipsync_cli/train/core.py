"""The one training core: the lip-sync expert and every generator train through ``train(cfg)``.

Read it top to bottom: config -> distributed setup -> data -> model init (scratch / --init / --resume) ->
optimizers -> eval -> loop -> checkpoints. What differs between the expert and a generator (the models, one
training step, one eval batch) lives in two small task classes; the loop, precision, clipping, DDP,
checkpoints, metrics and resume are shared.

Exactness of resume: the sample order is a function of (seed, step, batch size, world size) (see ``data.py``),
and a checkpoint (``last.pt``) holds the model(s), optimizer(s), grad scaler(s), step, the sync-weight switch and
every RNG state, so a run stopped at step k and resumed continues the curve of the uninterrupted run. A resume with
another batch size or number of processes is refused, since it would read other samples.

Stopping: SIGTERM (what torchrun's agent sends on Ctrl-C or pre-emption) and a first Ctrl-C only ask the loop
to stop; it finishes the optimizer step in progress, every rank agrees at the next step boundary, rank 0 saves
``last.pt`` and the run returns ``interrupted``. A second Ctrl-C interrupts at once; inside a step that saves
nothing (the last checkpoint stands), so no checkpoint ever holds half a step.

Generator checkpoints store ``mel_lead``: the audio/video lead of the dataset they were trained on
(``GeneratorDataset.lead``), which ``lipsync dub`` reads back (``checkpoint.generator_mel_lead``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lipsync_cli.device import autocast, device_type, resolve_device, resolve_precision
from lipsync_cli.errors import BadOption, CheckpointMismatch, LipsyncError
from lipsync_cli.files import atomic_write
from lipsync_cli.train import losses as L
from lipsync_cli.train.config import TrainConfig, save_config, sync_weight_mode, validate
from lipsync_cli.train.data import (
    ClipStore,
    EvalBatchSampler,
    GeneratorDataset,
    StepBatchSampler,
    SyncDataset,
    make_loader,
    read_filelist,
)

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_003  # the eval set is drawn with seed + this, so it never depends on the training order
SYNCNET_KIND = "syncnet_color"


@dataclass
class TrainResult:
    """What a run left behind. ``metrics`` are the eval records written to ``metrics.jsonl`` by this
    process."""

    run_dir: Path
    step: int
    last: Path
    best: Path
    best_loss: float
    interrupted: bool = False
    metrics: list[dict] = field(default_factory=list)
    signal: int | None = None  # the signal (SIGTERM, SIGINT...) that stopped the run, if one did


# ------------------------------------------------------------------------------------------------------------
# distributed helpers (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def process_rank() -> int:
    """This process' rank under torchrun (0 outside it): only rank 0 reports progress and writes files."""
    return int(os.environ.get("RANK", "0"))


def _setup_distributed(device_opt: str) -> tuple[Dist, torch.device]:
    """The process group (under torchrun) and this process' device: ``--device`` resolved by
    ``device.resolve_device``; under torchrun a GPU run uses GPU ``LOCAL_RANK`` (one per process, NCCL),
    anything else the CPU (gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_opt)
    if world > 1:
        import torch.distributed as dist

        rank, local = process_rank(), int(os.environ.get("LOCAL_RANK", "0"))
        on_cuda = device_type(device) == "cuda"
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if on_cuda else "gloo")
        if on_cuda:
            torch.cuda.set_device(local)
            return Dist(rank, world, local), torch.device("cuda", local)
        return Dist(rank, world, local), torch.device("cpu")
    return Dist(), torch.device(device)


def _all_reduce_sum(values: dict[str, float], d: Dist, device: torch.device) -> dict[str, float]:
    if d.world == 1:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


class _StopRequests:
    """SIGTERM, SIGHUP and a first Ctrl-C (SIGINT) ask the loop to stop at the next step boundary; a second
    Ctrl-C raises KeyboardInterrupt at once. Installed only from the main thread, never over a signal ignored
    on entry (``nohup``); the previous handlers come back on exit."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))

    def __init__(self) -> None:
        self.reason: str | None = None  # the signal's name, "KeyboardInterrupt" or "another rank"
        self.signum: int | None = None  # the signal this process received, if any
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old.clear()

    def _on_signal(self, signum: int, frame) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
        self.request(signal.Signals(signum).name)

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def agreed(self, d: Dist, device: torch.device) -> bool:
        """True on every rank when any rank was asked to stop: a collective, so all ranks stop at the same
        step (one that stopped alone would leave the others waiting in their next all-reduce)."""
        mine = self.reason is not None
        if d.world == 1:
            return mine
        import torch.distributed as dist

        flag = torch.tensor([1.0 if mine else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and self.reason is None:
            self.reason = "another rank"
        return flag.item() > 0


# ------------------------------------------------------------------------------------------------------------
# the two tasks: what is trained, one step, one eval batch


class SyncNetTask:
    """The SyncNet_color expert: cosine similarity of audio and lower-face embeddings, BCE against in/off
    sync."""

    kind = SYNCNET_KIND
    loss_names = ("loss",)
    eval_keys = ("loss", "acc", "n")  # what eval_batch returns: the same keys on every rank, for the all-reduce

    def __init__(self, cfg: TrainConfig, device: torch.device):
        from lipsync_cli.models.syncnet import SyncNetColor

        self.cfg, self.device = cfg, device
        self.model = SyncNetColor(**cfg.arch_config).to(device)
        self.model.arch = SYNCNET_KIND
        self.model.kind = SYNCNET_KIND

    def dataset(self, store: ClipStore, seed: int):
        return SyncDataset(store, seed, self.cfg.neg_min_offset)

    def init_from(self, sd: dict) -> None:
        self.model.load_state_dict(sd)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def step(self, batch, amp, backward) -> dict[str, float]:
        x, mel, y = (t.to(self.device, non_blocking=True) for t in batch)  # (B,15,48,96) (B,1,80,16) (B,1)
        with amp():
            a, v = self.model(mel, x)
        loss, _ = L.cosine_bce(a, v, y)
        backward("model", loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def eval_batch(self, batch, amp) -> dict[str, float]:
        x, mel, y = (t.to(self.device) for t in batch)
        with amp():
            a, v = _unwrap(self.model)(mel, x)  # no DDP: ranks may see different numbers of eval batches
        loss, d = L.cosine_bce(a, v, y)
        n = len(y)
        correct = ((d > 0.5).float() == y.view(-1)).float().sum().item()
        return {"loss": loss.item() * n, "acc": correct, "n": n}

    def best_key(self, metrics: dict) -> float:
        return metrics["loss"]

    def checkpoint_extras(self) -> dict:
        return {}

    def load_extras(self, ckpt: dict) -> None:
        pass

    def sample_grid(self, batch):
        return None


class GeneratorTask:
    """A generator: (1 - a - b) L1 + a sync (frozen expert) + b (GAN with the visual-quality discriminator,
    or LPIPS)."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        from lipsync_cli.models import build_generator

        self.cfg, self.device = cfg, device
        self.kind = cfg.arch
        self.model = build_generator(cfg.arch, cfg.arch_config).to(device)
        self.expert = self._load_expert(cfg.syncnet, device)
        self.sync_auto, self.a = sync_weight_mode(cfg)
        self.sync_active = not self.sync_auto
        self.use_lpips = cfg.arch == "lpips_attn_wav2lip"
        self.use_gan = cfg.gan and not self.use_lpips
        self.b = cfg.gan_weight if (self.use_gan or self.use_lpips) else 0.0
        self.disc = None
        self.lpips = None
        if self.use_gan:
            from lipsync_cli.models.disc import Wav2LipDiscQual

            self.disc = Wav2LipDiscQual().to(device)
            if cfg.disc_init:
                from lipsync_cli.models.disc import load_discriminator

                self.disc.load_state_dict(_unwrap(load_discriminator(cfg.disc_init, device=device)).state_dict())
        if self.use_lpips:
            self.lpips = L.make_lpips(cfg.lpips_net, cfg.lpips_pretrained, device)
        extra = "gan" if self.use_gan else "lpips" if self.use_lpips else None
        self.loss_names = ("loss", "l1", "sync") + ((extra,) if extra else ()) + (("disc",) if self.use_gan else ())
        self.eval_keys = ("l1", "sync", "n") + ((extra,) if extra else ())
        self.mel_lead = GeneratorDataset.lead  # set from the dataset actually built, see dataset()

    @staticmethod
    def _load_expert(path: str, device: torch.device) -> torch.nn.Module:
        from lipsync_cli.models.syncnet import load_expert

        expert = _unwrap(load_expert(path, device=device))
        expert = expert.to(device).eval()  # BN statistics stay those of the expert
        for p in expert.parameters():
            p.requires_grad_(False)
        return expert

    def dataset(self, store: ClipStore, seed: int):
        ds = GeneratorDataset(store, seed)
        self.mel_lead = int(ds.lead)  # the lead the checkpoints record: the one the samples were built with
        return ds

    def init_from(self, sd: dict) -> None:
        missing, unexpected = self.model.load_state_dict(sd, strict=False)
        if unexpected:
            raise CheckpointMismatch(f"--init does not fit {self.cfg.arch}: unexpected keys such as {unexpected[0]}")
        if missing:
            log.info(
                "--init: %d parameters of %s start from scratch (e.g. %s)",
                len(missing),
                self.cfg.arch,
                missing[0],
            )

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {
            "model": torch.optim.Adam(
                [p for p in self.model.parameters() if p.requires_grad], lr=self.cfg.lr, betas=(0.5, 0.999)
            )
        }
        if self.disc is not None:
            opts["disc"] = torch.optim.Adam(self.disc.parameters(), lr=self.cfg.disc_lr, betas=(0.5, 0.999))
        return opts

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, **({"disc": self.disc} if self.disc is not None else {})}

    def weights(self) -> tuple[float, float, float]:
        """(w_l1, a, b) in effect now: Wav2Lip keeps L1 at 1 - a - b with a = 0 until sync switches on."""
        a = self.a if self.sync_active else 0.0
        return 1.0 - a - self.b, a, self.b

    def _forward(self, batch, amp, model: torch.nn.Module | None = None):
        x, indiv, mel, y = (t.to(self.device, non_blocking=True) for t in batch)
        # x (B,6,T,96,96) indiv (B,T,1,80,16) mel (B,1,80,16) y (B,3,T,96,96)
        with amp():
            g = (model or self.model)(indiv, x)  # (B,3,T,96,96)
        return x, mel, y, g.float()

    def step(self, batch, amp, backward) -> dict[str, float]:
        w_l1, a, b = self.weights()
        _x, mel, y, g = self._forward(batch, amp)
        l1 = F.l1_loss(g, y)
        with amp():
            sync = L.sync_loss(self.expert, mel, g) if a > 0 else None
        out = {"l1": l1.item()}
        loss = w_l1 * l1
        if sync is not None:
            loss = loss + a * sync
            out["sync"] = sync.item()
        if self.use_gan:
            with amp():
                # the unwrapped disc: this forward is only for the generator's gradient (no DDP hooks)
                gan = L.bce_prob(_unwrap(self.disc)(g), 1.0)
            loss = loss + b * gan
            out["gan"] = gan.item()
        elif self.use_lpips:
            lp = L.lpips_loss(self.lpips, g, y)
            loss = loss + b * lp
            out["lpips"] = lp.item()
        backward("model", loss)
        out["loss"] = loss.item()
        if self.use_gan:
            # discriminator: real -> 1, generated -> 0, one forward on both so DDP sees one pass
            with amp():
                pred = self.disc(torch.cat([y, g.detach()], dim=0))  # (T*2B, 1), time-major rows
            pred = pred.view(y.size(2), 2, y.size(0))  # (T, real|fake, B)
            d_loss = (L.bce_prob(pred[:, 0], 1.0) + L.bce_prob(pred[:, 1], 0.0)) / 2
            backward("disc", d_loss)
            out["disc"] = d_loss.item()
        return out

    @torch.no_grad()
    def eval_batch(self, batch, amp) -> dict[str, float]:
        # no DDP: ranks may see different numbers of eval batches
        _x, mel, y, g = self._forward(batch, amp, _unwrap(self.model))
        n = len(y)
        out = {"l1": F.l1_loss(g, y).item() * n, "n": n}
        with amp():
            out["sync"] = L.sync_loss(self.expert, mel, g).item() * n
        if self.use_lpips:
            out["lpips"] = L.lpips_loss(self.lpips, g, y).item() * n
        if self.use_gan:
            with amp():
                out["gan"] = L.bce_prob(_unwrap(self.disc)(g), 1.0).item() * n
        return out

    def best_key(self, metrics: dict) -> float:
        # fixed weights, so the criterion does not jump when the sync loss switches on
        return (1.0 - self.a - self.b) * metrics["l1"] + self.a * metrics["sync"]

    def after_eval(self, metrics: dict) -> None:
        if self.sync_auto and not self.sync_active and metrics["sync"] < self.cfg.sync_threshold:
            self.sync_active = True
            log.info(
                "eval sync loss %.4f < %.2f: sync loss switched on (weight %.3g)",
                metrics["sync"],
                self.cfg.sync_threshold,
                self.a,
            )

    def checkpoint_extras(self) -> dict:
        extras: dict[str, Any] = {"sync_weight_active": self.sync_active, "mel_lead": self.mel_lead}
        if self.disc is not None:
            extras["disc_state_dict"] = {k: v.detach().cpu() for k, v in _unwrap(self.disc).state_dict().items()}
        return extras

    def load_extras(self, ckpt: dict) -> None:
        if "mel_lead" in ckpt and int(ckpt["mel_lead"]) != self.mel_lead:
            raise CheckpointMismatch(
                f"cannot resume: the run was trained with a mel lead of {ckpt['mel_lead']} frames, this version "
                f"trains with {self.mel_lead}",
                "start a new run from its weights with --init",
            )
        self.sync_active = bool(ckpt.get("sync_weight_active", self.sync_active))
        if self.disc is not None and "disc_state_dict" in ckpt:
            _unwrap(self.disc).load_state_dict(ckpt["disc_state_dict"])

    @torch.no_grad()
    def sample_grid(self, batch) -> torch.Tensor | None:
        """(3, H, W) RGB image: rows of input (masked), reference, generated, ground truth for 4 samples'
        frame 0."""
        from torchvision.utils import make_grid

        model = _unwrap(self.model)  # rank 0 alone draws samples: no DDP collectives here
        was_training = model.training
        model.eval()
        x, indiv, _mel, y = (t[:4].to(self.device) for t in batch)
        g = model(indiv, x).float()
        model.train(was_training)
        rows = [x[:, :3, 0], x[:, 3:, 0], g[:, :, 0], y[:, :, 0]]  # each (n, 3, 96, 96) BGR
        grid = make_grid(torch.cat(rows).flip(1).clamp(0, 1).cpu(), nrow=len(x))
        return grid


# ------------------------------------------------------------------------------------------------------------
# checkpoints


def _rng_state() -> dict:
    """Every RNG state, as tensors and plain Python values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict | None) -> None:
    if not state:
        return
    random.setstate(_tuplify(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except RuntimeError:  # a different number of GPUs: keep the fresh CUDA generators
            pass


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def _load_train_checkpoint(path: Path) -> dict:
    from lipsync_cli.checkpoint import load_file

    obj = load_file(path)
    if not isinstance(obj, dict) or "state_dict" not in obj or "optimizers" not in obj:
        raise CheckpointMismatch(
            f"{path} holds no optimizer state to resume (best.pt and step_*.pt are weights only)",
            "resume from the run's last.pt (or the RUN directory), or start from these weights with --init",
        )
    return obj


def _resolve_resume(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        from lipsync_cli.errors import InputNotFound

        raise InputNotFound(f"nothing to resume: {p} does not exist", "pass RUN/last.pt or a RUN directory")
    return p


# what only resuming needs: in last.pt alone (Adam's two moments are twice the size of the weights)
RESUME_KEYS = ("optimizers", "optimizer", "scalers", "rng", "running")


def weights_only(ckpt: dict) -> dict:
    """A training checkpoint without what only resuming needs: the model(s), their config, step and metrics."""
    return {k: v for k, v in ckpt.items() if k not in RESUME_KEYS}


class _Checkpointer:
    """Atomic saves on rank 0: last.pt (the whole training state, what ``--resume`` reads), best.pt (the weights
    of the lowest eval loss) and, with ``keep_every`` N, step_XXXXXXX.pt (the weights at every Nth step). The
    optimizer state is written once, in last.pt."""

    def __init__(self, run_dir: Path, keep_every: int):
        self.run_dir, self.keep_every = run_dir, keep_every

    def save(self, ckpt: dict, step: int, is_best: bool) -> None:
        from lipsync_cli.checkpoint import atomic_save

        atomic_save(ckpt, self.run_dir / "last.pt")
        weights = weights_only(ckpt)
        if self.keep_every and step % self.keep_every == 0:
            atomic_save(weights, self.run_dir / f"step_{step:07d}.pt")
        if is_best or not (self.run_dir / "best.pt").exists():
            atomic_save(weights, self.run_dir / "best.pt")


# ------------------------------------------------------------------------------------------------------------
# metrics


def _read_metrics(path: Path, up_to_step: int) -> list[dict]:
    """The records of ``metrics.jsonl`` up to ``up_to_step`` (later ones were written after the
    checkpoint)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= up_to_step:
            out.append(rec)
    return out


def _write_metrics(path: Path, records: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))


# ------------------------------------------------------------------------------------------------------------
# the core


ProgressFn = Callable[[dict], None]


def train(cfg: TrainConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Train the expert (``cfg.kind == "syncnet"``) or a generator; return where the checkpoints are.

    ``progress`` receives dicts: ``{"event": "start"|"step"|"eval"|"end", "step", "steps", "losses",
    "samples_per_s", ...}`` (rank 0 only); a KeyboardInterrupt raised in it asks the run to stop, as Ctrl-C
    does. SIGTERM or Ctrl-C: the step in progress is finished, ``last.pt`` saved, and the result has
    ``interrupted`` (see the module docstring). A checkpoint or metrics file that cannot be written raises
    WriteError.
    """
    with _StopRequests() as stop:
        return _train(cfg, progress, stop)


def _check_same_samples(ckpt: dict, cfg: TrainConfig, world: int, path: Path) -> None:
    """Refuse a resume that would not read the samples the uninterrupted run reads: the samples of a step
    depend on the batch size and the number of processes (``data.StepBatchSampler``)."""
    saved_bs = (ckpt.get("train_config") or {}).get("batch_size")
    saved_world = ckpt.get("world_size")  # absent in checkpoints from before it was stored: not checked
    diffs = []
    if saved_bs is not None and int(saved_bs) != cfg.batch_size:
        diffs.append(f"--batch-size {cfg.batch_size} (it was trained with {saved_bs})")
    if saved_world is not None and int(saved_world) != world:
        diffs.append(f"{world} process(es) (it was trained on {saved_world})")
    if diffs:
        raise BadOption(
            f"cannot resume {path} with {' and '.join(diffs)}: the sample order depends on both",
            f"resume with --batch-size {saved_bs or cfg.batch_size} on {saved_world or world} process(es), or "
            "start a new run from its weights with --init",
        )


def _train(cfg: TrainConfig, progress: ProgressFn | None, stop: _StopRequests) -> TrainResult:
    # --- config --------------------------------------------------------------------------------------------
    cfg = validate(cfg)
    run_dir = Path(cfg.out)
    dist, device = _setup_distributed(cfg.device)
    precision = resolve_precision(cfg.precision, device, training=True)  # "fp32" | "bf16" | "fp16"

    def emit(ev: dict) -> None:
        if progress is None or not dist.main:
            return
        try:
            progress(ev)
        except KeyboardInterrupt:  # Ctrl-C while the callback drew, or a caller asking to stop
            stop.request("KeyboardInterrupt")

    resume_ckpt = None
    if cfg.resume:
        resume_path = _resolve_resume(cfg.resume)
        resume_ckpt = _load_train_checkpoint(resume_path)
        _check_same_samples(resume_ckpt, cfg, dist.world, resume_path)
    seed = cfg.seed
    random.seed(seed + dist.rank)
    np.random.seed((seed + dist.rank) % 2**32)
    torch.manual_seed(seed)  # the same initial weights on every rank
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    # --- data ----------------------------------------------------------------------------------------------
    train_store = ClipStore(cfg.data, read_filelist(cfg.train_list), cfg.fps, cfg.mel_cache)
    val_store = ClipStore(cfg.data, read_filelist(cfg.val_list), cfg.fps, cfg.mel_cache)

    # --- model init: scratch / --init / --resume ------------------------------------------------------------
    task = SyncNetTask(cfg, device) if cfg.kind == "syncnet" else GeneratorTask(cfg, device)
    train_ds, val_ds = task.dataset(train_store, seed), task.dataset(val_store, seed + EVAL_SEED_OFFSET)
    if cfg.init and resume_ckpt is None:
        from lipsync_cli.checkpoint import load_file, unwrap_state_dict

        task.init_from(unwrap_state_dict(load_file(cfg.init)))
        log.info("initialised %s from %s", task.kind, cfg.init)
    step, best_loss = 0, math.inf
    if resume_ckpt is not None:
        found = resume_ckpt.get("kind")
        if found != task.kind:
            raise CheckpointMismatch(f"cannot resume a {task.kind} run from {cfg.resume}: it holds a {found}")
        _unwrap(task.model).load_state_dict(resume_ckpt["state_dict"])
        task.load_extras(resume_ckpt)
        step = int(resume_ckpt.get("step", 0))
        best_loss = float(resume_ckpt.get("best_loss", math.inf))
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        task.model = DDP(task.model, device_ids=ids)
        if getattr(task, "disc", None) is not None:
            task.disc = DDP(task.disc, device_ids=ids)
    task.model.train()

    # --- optimizers, precision ------------------------------------------------------------------------------
    optimizers = task.optimizers()
    scalers = {k: torch.amp.GradScaler(device.type, enabled=precision == "fp16") for k in optimizers}
    if resume_ckpt is not None:
        for k, opt in optimizers.items():
            opt.load_state_dict(resume_ckpt["optimizers"][k])
        for k, sc in scalers.items():
            if resume_ckpt.get("scalers", {}).get(k):
                sc.load_state_dict(resume_ckpt["scalers"][k])
        _set_rng_state(resume_ckpt.get("rng", {}).get(str(dist.rank)) or resume_ckpt.get("rng", {}).get("0"))

    def amp():
        return autocast(device, precision)

    def backward(name: str, loss: torch.Tensor) -> None:
        opt, scaler = optimizers[name], scalers[name]
        params = [p for g in opt.param_groups for p in g["params"]]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()

    # --- eval -----------------------------------------------------------------------------------------------
    metrics_path = run_dir / "metrics.jsonl"
    records = _read_metrics(metrics_path, step) if (dist.main and resume_ckpt is not None) else []
    if dist.main:
        _write_metrics(metrics_path, records)
    new_records: list[dict] = []
    writer = None
    if dist.main and cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tb"), purge_step=step if step else None)
        except ImportError:
            log.warning("tensorboard is not installed: no TensorBoard logs")
    val_loader = make_loader(
        val_ds,
        EvalBatchSampler(cfg.eval_batches, cfg.batch_size, dist.rank, dist.world),
        workers=min(cfg.workers, 2),
        pin_memory=device.type == "cuda",
    )
    pin = device.type == "cuda"

    def evaluate(train_avg: dict[str, float]) -> dict:
        nonlocal best_loss
        task.model.eval()
        if getattr(task, "disc", None) is not None:
            task.disc.eval()
        # the same keys on every rank, zeros where a rank has no eval batch (fewer batches than processes):
        # every rank takes part in the all-reduce with a tensor of the same size
        sums = dict.fromkeys(task.eval_keys, 0.0)
        grid_batch = None
        for batch in val_loader:
            for k, v in task.eval_batch(batch, amp).items():
                sums[k] += v
            grid_batch = grid_batch if grid_batch is not None else batch
        sums = _all_reduce_sum(sums, dist, device)
        task.model.train()
        if getattr(task, "disc", None) is not None:
            task.disc.train()
        n = max(sums.pop("n", 0.0), 1.0)
        m = {k: v / n for k, v in sums.items()}
        if "loss" not in m:
            m["loss"] = task.best_key(m)
        key = task.best_key(m)
        is_best = key < best_loss
        if is_best:
            best_loss = key
        if hasattr(task, "after_eval"):
            task.after_eval(m)
        rec = {"step": step, "split": "val", **{k: round(float(v), 6) for k, v in m.items()}}
        if hasattr(task, "sync_active"):
            rec["sync_weight"] = task.weights()[1]
        if dist.main:
            tr = {"step": step, "split": "train", **{k: round(float(v), 6) for k, v in train_avg.items()}}
            out = ([tr] if train_avg else []) + [rec]
            records.extend(out)
            new_records.extend(out)
            _write_metrics(metrics_path, records)
            if writer is not None:
                for k, v in m.items():
                    writer.add_scalar(f"val/{k}", v, step)
                grid = task.sample_grid(grid_batch) if grid_batch is not None else None
                if grid is not None:
                    writer.add_image("samples/input_reference_generated_truth", grid, step)
                writer.flush()
            emit({"event": "eval", "step": step, "steps": cfg.steps, "metrics": m})
        return {"is_best": is_best}

    def checkpoint(is_best: bool) -> None:
        if not dist.main:
            return
        from lipsync_cli.checkpoint import make_checkpoint

        model = _unwrap(task.model)
        ckpt = make_checkpoint(
            model,
            kind=task.kind,
            arch=task.kind,
            optimizers={k: o.state_dict() for k, o in optimizers.items()},
            scalers={k: s.state_dict() for k, s in scalers.items() if s.is_enabled()},
            step=step,
            epoch=step * cfg.batch_size * dist.world // max(len(train_store), 1),
            train_config=cfg.to_dict(),
            metrics=records[-2:],
            best_loss=best_loss,
            world_size=dist.world,
            rng={"0": _rng_state()},
            running={"sums": dict(running), "n": n_running},  # the train averages of the next eval
            **task.checkpoint_extras(),
        )
        ckpt["optimizer"] = ckpt["optimizers"]["model"]
        _Checkpointer(run_dir, cfg.keep_every).save(ckpt, step, is_best)

    # --- loop -----------------------------------------------------------------------------------------------
    loader = make_loader(
        train_ds,
        StepBatchSampler(step, cfg.steps, cfg.batch_size, dist.rank, dist.world),
        workers=cfg.workers,
        pin_memory=pin,
    )
    emit(
        {
            "event": "start",
            "step": step,
            "steps": cfg.steps,
            "kind": task.kind,
            "device": str(device),
            "world": dist.world,
        }
    )
    interrupted = False
    if step == 0 and resume_ckpt is None:
        evaluate({})  # the untrained baseline, so every curve starts at step 0
    running: dict[str, float] = {}
    n_running = 0
    if resume_ckpt is not None and isinstance(resume_ckpt.get("running"), dict):
        running = {k: float(v) for k, v in resume_ckpt["running"]["sums"].items()}
        n_running = int(resume_ckpt["running"]["n"])
    t_last, step_last = time.perf_counter(), step
    saved_at = None  # the step of the last checkpoint this run wrote
    in_step = False  # True from the first backward of a step until its counter moves
    batches = iter(loader)
    try:
        while step < cfg.steps:
            if stop.agreed(dist, device):  # every rank, every step: they all stop at the same boundary
                interrupted = True
                break
            batch = next(batches)
            in_step = True
            out = task.step(batch, amp, backward)
            step += 1
            in_step = False
            for k, v in out.items():
                running[k] = running.get(k, 0.0) + v
            n_running += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                sps = (step - step_last) * cfg.batch_size * dist.world / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                if writer is not None:
                    for k, v in out.items():
                        writer.add_scalar(f"train/{k}", v, step)
                emit({"event": "step", "step": step, "steps": cfg.steps, "losses": out, "samples_per_s": sps})
            if step % cfg.eval_every == 0 or step == cfg.steps:
                avg = {k: v / max(n_running, 1) for k, v in running.items()}
                running, n_running = {}, 0
                res = evaluate(avg)
                checkpoint(res["is_best"])
                saved_at = step
    except KeyboardInterrupt:  # a second Ctrl-C: at once
        if in_step:  # the optimizers may have stepped without the counter: such a state is never saved
            if dist.main:
                log.warning("interrupted inside step %d: nothing saved (%s holds the last checkpoint)",
                            step + 1, run_dir / "last.pt")
            raise
        interrupted = True
    finally:
        if writer is not None:
            writer.close()
    if interrupted:
        if dist.main:
            log.warning("stopped at step %d (%s): saving %s", step, stop.reason or "KeyboardInterrupt",
                        run_dir / "last.pt")
        if saved_at != step:
            checkpoint(False)
    elif not (run_dir / "last.pt").exists() and dist.main:
        checkpoint(False)
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
    emit({"event": "end", "step": step, "steps": cfg.steps, "interrupted": interrupted})
    return TrainResult(run_dir, step, run_dir / "last.pt", run_dir / "best.pt", best_loss, interrupted, new_records,
                       stop.signum if interrupted else None)


def resume_config(run_or_ckpt: str, **overrides: Any) -> TrainConfig:
    """The TrainConfig saved in a checkpoint (or RUN/last.pt), with ``overrides`` applied and ``resume``
    set."""
    path = _resolve_resume(run_or_ckpt)
    ckpt = _load_train_checkpoint(path)
    saved = ckpt.get("train_config")
    if not isinstance(saved, dict):
        raise LipsyncError(f"{path} holds no training config", "pass the full flags with --resume")
    known = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    return replace(cfg, resume=str(path), **{k: v for k, v in overrides.items() if v is not None})
