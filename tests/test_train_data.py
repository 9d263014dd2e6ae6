"""Fast tests of the training data path: synthetic dataset, samplers, datasets, mel cache, config, losses."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from lipsync_cli.constants import FACE_HALF, SAMPLE_RATE, SYNC_T
from lipsync_cli.errors import BadOption, LipsyncError
from lipsync_cli.train.config import TrainConfig, load_config_file, make_config, sync_weight_mode, validate
from lipsync_cli.train.data import (
    MEL_CACHE_NAME,
    ClipStore,
    EvalBatchSampler,
    GeneratorDataset,
    StepBatchSampler,
    SyncDataset,
    compute_mel,
    read_filelist,
)
from lipsync_cli.train.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    lists = make_synthetic_dataset(root, n_speakers=2, clips_per_speaker=2, seconds=1.2, seed=3)
    return root, lists


def test_synthetic_layout(synth):
    import cv2
    import soundfile as sf

    root, lists = synth
    assert set(lists) == {"train", "val", "test"}
    names = [n for split in ("train", "val", "test") for n in read_filelist(lists[split])]
    assert sorted(names) == ["spk00/00000", "spk00/00001", "spk01/00000", "spk01/00001"]
    assert read_filelist(lists["train"]) == ["spk00/00000", "spk01/00000"]
    for n in names:
        d = root / n
        assert sorted(int(p.stem) for p in d.glob("*.jpg")) == list(range(30))  # 1.2 s at 25 fps
        wav, sr = sf.read(d / "audio.wav")
        assert sr == SAMPLE_RATE and wav.ndim == 1 and len(wav) == int(1.2 * SAMPLE_RATE)
        assert cv2.imread(str(d / "0.jpg")).shape == (96, 96, 3)


def test_synthetic_mouth_follows_loudness(synth):
    """Lip sync is learnable: the lower half changes with the audio's loudness, the upper half barely
    moves."""
    import cv2
    import soundfile as sf

    root, _ = synth
    d = root / "spk00" / "00000"
    frames = np.stack([cv2.imread(str(d / f"{i}.jpg")).astype(np.float32) for i in range(30)])
    wav, _ = sf.read(d / "audio.wav")
    rms = np.array([np.sqrt(np.mean(wav[i * 640 : (i + 1) * 640] ** 2)) for i in range(30)])
    mouth = frames[:, 60:80, 34:62].mean(axis=(1, 2, 3))  # darker when open
    assert np.corrcoef(rms, -mouth)[0, 1] > 0.8
    # the rows that change most between the loudest and the quietest frame are the mouth, in the lower half
    diff = np.abs(frames[rms.argmax()] - frames[rms.argmin()]).mean(axis=(1, 2))  # (96,)
    assert diff.argmax() >= FACE_HALF and diff[FACE_HALF:].sum() > 3 * diff[:FACE_HALF].sum()


def test_synthetic_is_deterministic(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", 1, 1, seconds=0.4, seed=5)
    b = make_synthetic_dataset(tmp_path / "b", 1, 1, seconds=0.4, seed=5)
    assert (tmp_path / "a/spk00/00000/audio.wav").read_bytes() == (tmp_path / "b/spk00/00000/audio.wav").read_bytes()
    assert a["train"].read_text() == b["train"].read_text()


def test_sync_dataset_shapes_and_far_negatives(synth):
    root, lists = synth
    store = ClipStore(root, read_filelist(lists["train"]), mel_cache=False)
    ds = SyncDataset(store, seed=0, neg_min_offset=5)
    x, mel, y = ds[0]
    assert x.shape == (15, 48, 96) and mel.shape == (1, 80, 16) and y.shape == (1,)
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    labels, offsets = [], []
    for k in range(300):
        s, w, pos = ds.pick(k % 2, np.random.default_rng([1, k]))
        labels.append(pos)
        offsets.append(abs(w - s))
        assert (w == s) if pos else abs(w - s) >= 5
    assert 0.35 < np.mean(labels) < 0.65
    assert min(o for o, p in zip(offsets, labels, strict=True) if not p) >= 5


def test_sync_dataset_face_is_lower_half_frames_on_channels(synth):
    root, lists = synth
    store = ClipStore(root, read_filelist(lists["train"]), mel_cache=False)
    ds = SyncDataset(store, seed=0)
    clip = ds.clip_for(4)
    s, w, _ = ds.pick(clip, np.random.default_rng([0, 4, 0]))
    x, mel, _ = ds[4]
    window = store.window(clip, w)  # (T, 96, 96, 3)
    for t in range(SYNC_T):
        np.testing.assert_array_equal(x[3 * t : 3 * t + 3].numpy(), window[t, FACE_HALF:].transpose(2, 0, 1))
    full = store.mel(clip)
    start = int(80 * (s / 25.0))
    np.testing.assert_array_equal(mel[0].numpy(), full[:, start : start + 16])


def test_generator_dataset(synth):
    root, lists = synth
    store = ClipStore(root, read_filelist(lists["train"]), mel_cache=False)
    ds = GeneratorDataset(store, seed=0)
    x, indiv, mel, y = ds[3]
    assert x.shape == (6, 5, 96, 96) and indiv.shape == (5, 1, 80, 16)
    assert mel.shape == (1, 80, 16) and y.shape == (3, 5, 96, 96)
    assert torch.all(x[:3, :, FACE_HALF:] == 0)
    torch.testing.assert_close(x[:3, :, :FACE_HALF], y[:, :, :FACE_HALF])
    assert not torch.equal(x[3:], y)  # the reference is another window
    # frame t's mel window starts 2 frames before it; consecutive windows advance 3-4 mel steps (80/25)
    step = [(indiv[t + 1, 0, :, :12] - indiv[t, 0, :, 3:15]).abs().min().item() for t in range(4)]
    assert min(step) == 0.0


def test_sample_order_is_a_function_of_seed_and_step(synth):
    root, lists = synth
    store = ClipStore(root, read_filelist(lists["train"]), mel_cache=False)
    a, b = GeneratorDataset(store, seed=0), GeneratorDataset(store, seed=0)
    for k in (0, 5, 17):
        for ta, tb in zip(a[k], b[k], strict=True):
            assert torch.equal(ta, tb)
    assert not torch.equal(a[1][3], a[2][3]) or not torch.equal(a[1][0], a[2][0])
    full = list(StepBatchSampler(0, 6, 2))
    assert list(StepBatchSampler(3, 6, 2)) == full[3:]  # a resumed run reads the same ids
    r0, r1 = list(StepBatchSampler(0, 4, 2, 0, 2)), list(StepBatchSampler(0, 4, 2, 1, 2))
    ids0, ids1 = {i for b in r0 for i in b}, {i for b in r1 for i in b}
    assert not ids0 & ids1 and ids0 | ids1 == set(range(16))
    # every clip once per epoch
    assert sorted(a.clip_for(k) for k in range(len(store))) == list(range(len(store)))
    ev = [list(EvalBatchSampler(5, 3, r, 2)) for r in (0, 1)]
    assert len(ev[0]) == 3 and len(ev[1]) == 2


def test_bad_samples_are_skipped_then_fatal(synth, tmp_path, caplog):
    root, lists = synth
    good = read_filelist(lists["train"])
    store = ClipStore(root, ["spk99/missing", *good], mel_cache=False)
    ds = SyncDataset(store, seed=0)
    bad_ids = [k for k in range(len(store)) if ds.clip_for(k) == 0]
    with caplog.at_level(logging.WARNING):
        x, _, _ = ds[bad_ids[0]]
    assert x.shape == (15, 48, 96)
    assert "spk99/missing" in caplog.text
    only_bad = SyncDataset(ClipStore(root, ["spk99/missing"], mel_cache=False), seed=0)
    with pytest.raises(LipsyncError, match="bad samples in a row"):
        only_bad[0]


def test_mel_cache_written_once_and_equal(synth, tmp_path):
    import shutil

    root, _ = synth
    shutil.copytree(root / "spk00" / "00000", tmp_path / "s" / "c")
    store = ClipStore(tmp_path, ["s/c"], mel_cache=True)
    mel = store.mel(0)
    cached = tmp_path / "s" / "c" / MEL_CACHE_NAME
    assert cached.is_file()
    np.testing.assert_array_equal(np.load(cached), mel)
    np.testing.assert_array_equal(mel, compute_mel(tmp_path / "s" / "c" / "audio.wav"))
    assert mel.shape == (80, 1 + int(1.2 * SAMPLE_RATE) // 200)
    # a second store reads the cache instead of the audio
    (tmp_path / "s" / "c" / "audio.wav").touch()  # same mtime order: cache must be at least as new
    np.save(cached, mel + 1)
    import os

    os.utime(cached, (os.path.getmtime(cached) + 10,) * 2)
    np.testing.assert_array_equal(ClipStore(tmp_path, ["s/c"]).mel(0), mel + 1)


def test_config_files_and_precedence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[train]\nsteps = 12\nbatch-size = 3\nsync_weight = "auto"\n')
    yml = tmp_path / "c.yaml"
    yml.write_text("steps: 7\nlr: 0.001\nsync_weight: 0.05\n")
    assert load_config_file(toml) == {"steps": 12, "batch_size": 3, "sync_weight": "auto"}
    cfg = make_config(toml, steps=20, lr=None)
    assert cfg.steps == 20 and cfg.batch_size == 3 and cfg.lr == TrainConfig().lr
    cfg = make_config(yml)
    assert cfg.steps == 7 and cfg.lr == 0.001 and sync_weight_mode(cfg) == (False, 0.05)
    assert sync_weight_mode(TrainConfig()) == (True, 0.03)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    with pytest.raises(BadOption, match="stepz"):
        load_config_file(bad)


def test_toml_config_on_python_310_uses_tomli(tmp_path, monkeypatch):
    """Python 3.10 has no tomllib: `--config x.toml` then reads the file with tomli (the same parser)."""
    import importlib
    import sys
    import types

    real = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    parsed = []
    tomli = types.ModuleType("tomli")
    tomli.loads = lambda text: parsed.append(text) or real.loads(text)
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` fails, as on 3.10
    monkeypatch.setitem(sys.modules, "tomli", tomli)
    path = tmp_path / "run.toml"
    path.write_text("[train]\nsteps = 7\nbatch-size = 3\n")
    assert load_config_file(path) == {"steps": 7, "batch_size": 3}
    assert parsed == [path.read_text()]


def test_validate_rules(synth, tmp_path):
    root, lists = synth
    base = dict(data=str(root), train_list=str(lists["train"]), val_list=str(lists["val"]), out=str(tmp_path))
    validate(TrainConfig(kind="syncnet", **base))
    with pytest.raises(BadOption, match="--syncnet"):
        validate(TrainConfig(kind="generator", **base))
    with pytest.raises(BadOption, match="sync-weight"):
        validate(TrainConfig(kind="syncnet", sync_weight="often", **base))
    with pytest.raises(BadOption, match="architecture"):
        validate(TrainConfig(kind="generator", arch="nope", syncnet=str(lists["train"]), **base))
    with pytest.raises(BadOption, match="a \\+ b < 1"):
        validate(TrainConfig(kind="syncnet", sync_weight=0.95, **base))


def test_losses_match_upstream_reference(compat_dir, fake_ckpt):
    """Our cosine-BCE and generator sync loss equal the upstream numbers (fake lipsync_expert.pth)."""
    from lipsync_cli.models.syncnet import load_expert
    from lipsync_cli.train.losses import cosine_bce, sync_loss

    ref = np.load(compat_dir / "syncnet_color_ref.npz")
    expert = load_expert(fake_ckpt("syncnet_color"))
    with torch.no_grad():
        a, v = expert(torch.from_numpy(ref["mel"]), torch.from_numpy(ref["face"]))
        loss, d = cosine_bce(a, v, torch.from_numpy(ref["y"]))
        np.testing.assert_allclose(d.numpy(), ref["cosine"], atol=1e-4)
        np.testing.assert_allclose(loss.item(), float(ref["bce_loss"]), rtol=1e-4, atol=1e-4)
        g = sync_loss(expert, torch.from_numpy(ref["mel"]), torch.from_numpy(ref["gen_clip"]))
        np.testing.assert_allclose(g.item(), float(ref["gen_clip_sync_loss"]), rtol=1e-4, atol=1e-4)


def test_export_expert_in_upstream_layout(tmp_path):
    from typer.testing import CliRunner

    from lipsync_cli.checkpoint import atomic_save, load_file, make_checkpoint
    from lipsync_cli.cli.app import app
    from lipsync_cli.models.syncnet import SyncNetColor, load_expert

    net = SyncNetColor()
    net.arch = "syncnet_color"
    ours = tmp_path / "best.pt"
    atomic_save(make_checkpoint(net, kind="syncnet_color", step=7, epoch=1, optimizers={}), ours)
    out = tmp_path / "lipsync_expert.pth"
    r = CliRunner().invoke(app, ["train", "export", str(ours), str(out)])
    assert r.exit_code == 0, r.output
    obj = load_file(out)
    assert set(obj) == {"state_dict", "optimizer", "global_step", "global_epoch"} and obj["global_step"] == 7
    assert list(obj["state_dict"]) == list(net.state_dict())
    again = load_expert(out)
    for k, v in net.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)
    r = CliRunner().invoke(app, ["train", "export", str(ours), str(out), "--disc"])
    assert r.exit_code != 0


def test_init_attn_wav2lip_from_official_wav2lip(synth, tmp_path, fake_ckpt):
    """--init wav2lip.pth for attn_wav2lip: the shared Wav2Lip layers take the file's weights."""
    from lipsync_cli.checkpoint import load_file, unwrap_state_dict
    from lipsync_cli.train.core import GeneratorTask

    root, lists = synth
    cfg = TrainConfig(
        kind="generator",
        arch="attn_wav2lip",
        data=str(root),
        train_list=str(lists["train"]),
        val_list=str(lists["val"]),
        out=str(tmp_path),
        syncnet=str(fake_ckpt("syncnet_color")),
        gan=False,
    )
    task = GeneratorTask(cfg, torch.device("cpu"))
    sd = unwrap_state_dict(load_file(fake_ckpt("wav2lip")))
    task.init_from(sd)
    mine = task.model.state_dict()
    shared = [k for k in sd if k in mine]
    assert len(shared) == len(sd)
    for k in shared:
        assert torch.equal(mine[k], sd[k]), k
    assert all(not p.requires_grad for p in task.expert.parameters()) and not task.expert.training
