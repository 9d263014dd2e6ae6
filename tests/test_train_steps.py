"""End-to-end training on the synthetic dataset (CPU), the runs that do not share test_train.py's generator runs:
the expert learns sync, --sync-weight auto switches the sync term on, an interrupted run resumes onto the same curve,
and `lipsync train` from the command line (a file of its own so that the suite's workers share the training)."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import _base, _records, synthetic_lrs2

from lipsync_cli.train.config import make_config
from lipsync_cli.train.core import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_lrs2(tmp_path_factory)


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
        keep_every=2,
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
    assert sorted(p.name for p in cut.glob("*.pt")) == ["best.pt", "last.pt", "step_0000002.pt", "step_0000004.pt"]


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
