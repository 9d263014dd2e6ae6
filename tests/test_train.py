"""End-to-end training on the synthetic dataset (CPU): the expert learns sync, every generator lowers its eval
L1, an interrupted run resumes onto the same curve, and a trained generator dubs a clip (torchrun: see
test_train_dist.py)."""

from __future__ import annotations

import json

import pytest
import torch

from lipsync_cli.train.config import make_config
from lipsync_cli.train.core import train
from lipsync_cli.train.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    lists = make_synthetic_dataset(root, n_speakers=2, clips_per_speaker=3, seconds=2.0, seed=0)
    return root, lists


def _base(data, out, **kw):
    root, lists = data
    base = dict(
        data=str(root),
        train_list=str(lists["train"]),
        val_list=str(lists["val"]),
        out=str(out),
        workers=0,
        device="cpu",
        tensorboard=False,
        seed=0,
    )
    base.update(kw)
    return base


def _records(run, split="val"):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_syncnet_learns_sync(data, tmp_path):
    """The expert beats chance on held-out clips (every step of the CPU budget is spent here)."""
    run = tmp_path / "sync"
    cfg = make_config(
        **_base(data, run, kind="syncnet", steps=60, batch_size=8, lr=5e-4, eval_every=30, eval_batches=4)
    )
    res = train(cfg)
    val = _records(run)
    assert [r["step"] for r in val] == [0, 30, 60]
    assert val[0]["loss"] == pytest.approx(0.69, abs=0.05)  # untrained: chance
    best = min(r["loss"] for r in val[1:])
    assert best < 0.6 and max(r["acc"] for r in val[1:]) >= 0.7, val
    assert res.last.is_file() and res.best.is_file()
    # the checkpoint loads as the expert of generator training, in lipsync_expert.pth's layout
    from lipsync_cli.checkpoint import detect_kind, load_file
    from lipsync_cli.models.syncnet import load_expert

    assert detect_kind(load_file(res.best)) == "syncnet_color"
    load_expert(res.best)


# (arch, steps, extra options): eval uses BatchNorm's running statistics, which lag the first steps, so the
# CBAM variant needs a few more steps before its eval L1 is below the untrained one
GEN_ARCHS = [
    ("wav2lip", 8, {}),
    ("attn_wav2lip", 12, {}),
    ("lpips_attn_wav2lip", 8, {"lpips_pretrained": False}),
]
GEN_STEPS = {arch: steps for arch, steps, _ in GEN_ARCHS}


@pytest.fixture(scope="module")
def generator_runs(data, tmp_path_factory, fake_ckpt):
    """Each arch trained a few steps with a high LR; the same runs serve several tests."""
    runs = {}
    for arch, steps, extra in GEN_ARCHS:
        run = tmp_path_factory.mktemp(arch)
        cfg = make_config(
            **_base(
                data,
                run,
                kind="generator",
                arch=arch,
                syncnet=str(fake_ckpt("syncnet_color")),
                steps=steps,
                batch_size=2,
                lr=1e-3,
                eval_every=steps,
                eval_batches=2,
                log_every=1,
                **extra,
            )
        )
        runs[arch] = (run, train(cfg))
    return runs


@pytest.mark.parametrize("arch", list(GEN_STEPS))
def test_generator_lowers_eval_l1(generator_runs, arch):
    run, res = generator_runs[arch]
    val = _records(run)
    assert [r["step"] for r in val] == [0, GEN_STEPS[arch]]
    assert val[-1]["l1"] < val[0]["l1"], val
    train_rec = _records(run, "train")[-1]
    extra = {"wav2lip": "gan", "attn_wav2lip": "gan", "lpips_attn_wav2lip": "lpips"}[arch]
    assert extra in train_rec
    ckpt = torch.load(res.last, weights_only=True)
    assert ckpt["arch"] == arch and ckpt["step"] == GEN_STEPS[arch] and "optimizers" in ckpt
    # --sync-weight auto: the fake expert's sync loss is far above 0.75, so the sync term stays off
    assert "sync" not in train_rec and ckpt["sync_weight_active"] is False
    assert ("disc_state_dict" in ckpt) == (arch != "lpips_attn_wav2lip")


def test_trained_generator_dubs(generator_runs, tmp_path):
    """RUN/best.pt loads in `lipsync dub --checkpoint` and makes a video of the right length."""
    from typer.testing import CliRunner

    from lipsync_cli.cli.app import app
    from lipsync_cli.train.synthetic import make_synthetic_lrs2
    from lipsync_cli.video import probe

    run, res = generator_runs["wav2lip"]
    src = tmp_path / "lrs2"
    make_synthetic_lrs2(src, 1, 1, seconds=0.8)
    clip = src / "main/spk00/00000.mp4"
    out = tmp_path / "dubbed.mp4"
    args = ["dub", str(clip), str(clip), "-o", str(out), "--checkpoint", str(res.best)]
    args += ["--box", "32", "16", "128", "112", "--device", "cpu", "-q"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    info = probe(out)
    assert info.n_frames == 20 and info.has_audio


def test_sync_weight_auto_switches_on(data, tmp_path, fake_ckpt):
    run = tmp_path / "auto"
    cfg = make_config(
        **_base(
            data,
            run,
            kind="generator",
            arch="wav2lip",
            gan=False,
            syncnet=str(fake_ckpt("syncnet_color")),
            sync_threshold=100.0,  # any expert is "good enough": switches at the first eval
            steps=2,
            batch_size=1,
            eval_every=2,
            eval_batches=1,
        )
    )
    train(cfg)
    val = _records(run)
    assert val[0]["sync_weight"] == pytest.approx(0.03)
    assert "sync" in _records(run, "train")[-1]
    assert torch.load(run / "last.pt", weights_only=True)["sync_weight_active"] is True


def test_interrupt_and_resume_reproduce_the_curve(data, tmp_path, fake_ckpt):
    """Ctrl-C at step 3 saves last.pt; --resume continues to step 4 with the uninterrupted run's losses."""
    common = dict(
        kind="generator",
        arch="wav2lip",
        gan=True,
        syncnet=str(fake_ckpt("syncnet_color")),
        sync_weight=0.03,
        steps=4,
        batch_size=1,
        lr=1e-3,
        eval_every=2,
        eval_batches=1,
        log_every=1,
        keep_last=1,
    )
    full = tmp_path / "full"
    train(make_config(**_base(data, full, **common)))

    cut = tmp_path / "cut"

    def stop_at_3(ev):
        if ev["event"] == "step" and ev["step"] == 3:
            raise KeyboardInterrupt

    first = train(make_config(**_base(data, cut, **common)), stop_at_3)
    assert first.interrupted and first.step == 3
    assert torch.load(cut / "last.pt", weights_only=True)["step"] == 3
    second = train(make_config(**_base(data, cut, resume=str(cut), **common)))
    assert not second.interrupted and second.step == 4
    assert "sync" in _records(cut, "train")[-1]  # a number: the sync term is on from step 0
    a = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in a] == [(r["step"], r["split"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        for k in ra:
            if k not in ("step", "split"):
                assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-5), (k, ra, rb)
    assert sorted(p.name for p in cut.glob("*.pt")) == ["best.pt", "last.pt", "step_0000004.pt"]


def test_cli_train_generator_no_gan(data, tmp_path, fake_ckpt):
    from typer.testing import CliRunner

    from lipsync_cli.cli.app import app

    root, lists = data
    run = tmp_path / "cli"
    cfg = tmp_path / "extra.toml"
    cfg.write_text("eval_batches = 1\nworkers = 0\ntensorboard = false\ndevice = 'cpu'\n")
    args = ["train", "generator", "--arch", "wav2lip", "--no-gan", "--data", str(root)]
    args += ["--train-list", str(lists["train"]), "--val-list", str(lists["val"]), "--out", str(run)]
    args += ["--syncnet", str(fake_ckpt("syncnet_color")), "--steps", "1", "--batch-size", "1"]
    args += ["--config", str(cfg), "-q"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert "disc_state_dict" not in ckpt and ckpt["train_config"]["gan"] is False
    assert ckpt["train_config"]["eval_batches"] == 1
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["steps"] == 1 and saved["kind"] == "generator"
