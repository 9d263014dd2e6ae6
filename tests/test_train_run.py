"""The training loop's edges, in this process on a tiny synthetic dataset: Ctrl-C never saves half a step,
a resume that would read other samples is refused, precision follows device.py, a full disk is a one-line
WriteError that leaves nothing behind, and under torchrun only rank 0 draws a progress bar."""

from __future__ import annotations

import errno
import io
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from lipsync_cli.errors import BadOption
from lipsync_cli.train.config import make_config
from lipsync_cli.train.core import train
from lipsync_cli.train.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_synth")
    lists = make_synthetic_dataset(root, n_speakers=1, clips_per_speaker=2, seconds=1.2, seed=2)
    return root, lists


def _cfg(data, out, **kw):
    root, lists = data
    cfg = dict(
        kind="syncnet",
        data=str(root),
        train_list=str(lists["train"]),
        val_list=str(lists["val"]),
        out=str(out),
        steps=1,
        batch_size=2,  # SyncNet's BatchNorm needs 2 samples
        eval_batches=1,
        workers=0,
        device="cpu",
        tensorboard=False,
        seed=0,
    )
    cfg.update(kw)
    return make_config(**cfg)


def _cli_args(data, out) -> list[str]:
    root, lists = data
    args = ["train", "syncnet", "--data", str(root), "--train-list", str(lists["train"])]
    args += ["--val-list", str(lists["val"]), "--out", str(out), "--steps", "1", "--batch-size", "2"]
    return args + ["--eval-batches", "1", "--workers", "0", "--device", "cpu", "--no-tensorboard"]


def _cli(args: list[str]) -> int:
    from lipsync_cli.cli import main

    with pytest.raises(SystemExit) as exited:
        main(args)
    return exited.value.code


@pytest.mark.slow
def test_ctrl_c_inside_a_step_saves_only_whole_steps(data, tmp_path, fake_ckpt, monkeypatch):
    """Ctrl-C right after the generator's optimizer step of step 3 (before the discriminator's step and the
    step counter): the run finishes step 3, saves it and stops. Every optimizer in last.pt has taken exactly 3
    steps, and the resumed run ends with the weights of the uninterrupted one.

    One thread: oneDNN's multi-threaded kernels on AMX/AVX-512 CPUs do not add in a fixed order, so two identical
    uninterrupted runs differ by ~6e-5 with two threads (bitwise equal with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _ctrl_c_inside_a_step(data, tmp_path, fake_ckpt, monkeypatch)
    finally:
        torch.set_num_threads(threads)


def _ctrl_c_inside_a_step(data, tmp_path, fake_ckpt, monkeypatch):
    common = dict(kind="generator", arch="wav2lip", gan=True, syncnet=str(fake_ckpt("syncnet_color")))
    common.update(sync_weight=0.03, steps=4, batch_size=1, lr=1e-3, eval_every=4)
    full = train(_cfg(data, tmp_path / "full", **common))

    real_step = torch.optim.Adam.step
    calls = []

    def step_then_ctrl_c(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 5:  # each step updates the generator, then the discriminator: this is step 3's first
            os.kill(os.getpid(), signal.SIGINT)
        return out

    with monkeypatch.context() as mp:
        mp.setattr(torch.optim.Adam, "step", step_then_ctrl_c)
        cut = train(_cfg(data, tmp_path / "cut", **common))
    assert cut.interrupted and cut.step == 3 and cut.signal == signal.SIGINT
    ckpt = torch.load(cut.last, weights_only=True)
    assert ckpt["step"] == 3
    for name, opt in ckpt["optimizers"].items():
        assert {int(s["step"]) for s in opt["state"].values()} == {3}, name  # optimizer steps taken

    resumed = train(_cfg(data, tmp_path / "cut", resume=str(tmp_path / "cut"), **common))
    assert not resumed.interrupted and resumed.step == 4
    a, b = torch.load(full.last, weights_only=True), torch.load(resumed.last, weights_only=True)
    for part in ("state_dict", "disc_state_dict"):
        for k, v in a[part].items():
            # a resume from a half-done step, or with other samples, is off by a whole Adam step (~lr = 1e-3);
            # oneDNN's unordered threaded sums leave up to ~6e-5 between two identical runs on AMX/AVX-512 CPUs
            assert (v.float() - b[part][k].float()).abs().max().item() < 5e-4, (part, k)


def test_resume_with_other_batch_or_world_size_is_refused(data, tmp_path, capsys):
    """The samples of a step depend on the batch size and the number of processes: a resume with others is
    refused in one line, and the run is left as it was."""
    run = tmp_path / "run"
    train(_cfg(data, run))
    with pytest.raises(BadOption, match=r"--batch-size 4 \(it was trained with 2\)"):
        train(_cfg(data, run, steps=2, batch_size=4, resume=str(run)))

    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 1
    ckpt["world_size"] = 2  # as if written by `torchrun --nproc_per_node 2`
    torch.save(ckpt, run / "last.pt")
    with pytest.raises(BadOption, match=r"1 process\(es\) \(it was trained on 2\)"):
        train(_cfg(data, run, steps=2, resume=str(run)))

    capsys.readouterr()
    assert _cli(["train", "syncnet", "--resume", str(run), "--steps", "2", "--batch-size", "4", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot resume") and "\n" not in err, err
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 1


def test_checkpoints_write_the_optimizer_state_once(data, tmp_path, capsys):
    """By default a run keeps last.pt (everything --resume needs) and best.pt (weights only, about a third of
    last.pt: Adam's two moments are not copied); --keep-every N adds the weights of every Nth step (here on a
    resume from last.pt); best.pt cannot be resumed from, and --keep-every must fall on the evals."""
    resume_keys = {"optimizers", "optimizer", "scalers", "rng", "running"}  # what only --resume reads
    run = tmp_path / "run"
    train(_cfg(data, run))
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "last.pt"]
    last, best = (torch.load(run / n, weights_only=True) for n in ("last.pt", "best.pt"))
    assert "optimizers" in last and last["step"] == 1 and not resume_keys & set(best)
    assert set(best["state_dict"]) == set(last["state_dict"]) and best["kind"] == last["kind"] == "syncnet_color"
    assert (run / "best.pt").stat().st_size < 0.4 * (run / "last.pt").stat().st_size

    capsys.readouterr()
    assert _cli(["train", "syncnet", "--resume", str(run / "best.pt"), "--steps", "3", "-q"]) != 0
    err = capsys.readouterr().err.strip()
    assert "best.pt" in err and "last.pt" in err and "\n" not in err, err

    resumed = train(_cfg(data, run, steps=2, eval_every=1, keep_every=1, resume=str(run)))
    assert resumed.step == 2 and torch.load(run / "last.pt", weights_only=True)["step"] == 2
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "last.pt", "step_0000002.pt"]
    step = torch.load(run / "step_0000002.pt", weights_only=True)
    assert step["step"] == 2 and not resume_keys & set(step)

    assert _cli(_cli_args(data, tmp_path / "bad") + ["--eval-every", "2", "--keep-every", "3", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--keep-every 3" in err and "--eval-every 2" in err and "\n" not in err, err
    assert not (tmp_path / "bad").exists()


def test_precision_follows_device_rules(data, tmp_path, monkeypatch):
    """Training 'auto' is fp32 on the CPU (device.resolve_precision(training=True)); fp16 on the CPU is refused
    before anything is written."""
    from lipsync_cli.train import core

    with pytest.raises(BadOption, match="fp16"):
        train(_cfg(data, tmp_path / "fp16", precision="fp16"))
    assert not (tmp_path / "fp16").exists()
    used = []
    real_autocast = core.autocast
    monkeypatch.setattr(core, "autocast", lambda device, precision: used.append(precision) or real_autocast(
        device, precision))
    train(_cfg(data, tmp_path / "auto", precision="auto"))
    assert used and set(used) == {"fp32"}


@pytest.mark.parametrize("target", ["last.pt", "metrics.jsonl"])
def test_full_disk_is_a_write_error(data, tmp_path, monkeypatch, capsys, target):
    """No space left while writing a checkpoint or the metrics: exit 3, one line naming the file and the cause,
    and no temporary or half-written file in the run directory."""
    def no_space():
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if target == "last.pt":
        def save(obj, f, *args, **kwargs):
            Path(f).write_bytes(b"half a checkpoint")
            raise no_space()

        monkeypatch.setattr(torch, "save", save)
    else:
        write_text = Path.write_text

        def write(self, text, *args, **kwargs):
            if self.name.startswith(".metrics.jsonl"):
                write_text(self, text[:3], *args, **kwargs)
                raise no_space()
            return write_text(self, text, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write)
    run = tmp_path / "run"
    assert _cli(_cli_args(data, run) + ["-q"]) == 3
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(run / target) in err and os.strerror(errno.ENOSPC) in err, err
    assert not (run / target).exists()
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_rank_0_draws_a_progress_bar(data, tmp_path, monkeypatch, rank):
    """Under torchrun every rank shares the terminal: rank 0 draws the bar, the others print nothing."""
    from lipsync_cli.train import core

    def fake_train(cfg, progress):
        progress({"event": "start", "step": 0, "steps": 4})
        for s in range(1, 5):
            progress({"event": "step", "step": s, "steps": 4, "losses": {"loss": 0.5}, "samples_per_s": 9.0})
        return core.TrainResult(Path(cfg.out), 4, Path(cfg.out) / "last.pt", Path(cfg.out) / "best.pt", 0.5)

    monkeypatch.setattr(core, "train", fake_train)
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert _cli(_cli_args(data, tmp_path / "run")) == 0
    shown = terminal.getvalue()
    if rank == "0":
        assert "syncnet" in shown and "4/4" in shown and "samples/s" in shown, shown
    else:
        assert shown == ""


def test_train_syncnet_prints_no_foreign_warning(data, tmp_path):
    """Default --workers: at most the cores this process may use (torch warns when a DataLoader has more)."""
    import subprocess

    from checks import foreign_warnings

    args = [a for a in _cli_args(data, tmp_path / "run") if a not in ("--workers", "0")]
    r = subprocess.run([sys.executable, "-m", "lipsync_cli", *args], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "LIPSYNC_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert foreign_warnings(r.stderr) == [], r.stderr
