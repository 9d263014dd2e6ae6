"""The audio/video lead is a property of a generator checkpoint: a generator trained with `lipsync train
generator` and run by `lipsync dub` gets, for every frame, the mel window it was trained with for that frame."""

from __future__ import annotations

import pytest
import torch

from lipsync_cli.constants import SYNC_T
from lipsync_cli.train.data import ClipStore, GeneratorDataset
from lipsync_cli.train.synthetic import make_synthetic_dataset

FPS = 25.0
CLIP = "spk00/00000"
N_FRAMES = 30  # 1.2 s at 25 fps


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("lead_synth")
    lists = make_synthetic_dataset(root, n_speakers=1, clips_per_speaker=2, seconds=N_FRAMES / FPS, seed=1)
    return root, lists


def _cli(args: list[str]) -> int:
    """Exit status of the real console entry point, run in this process."""
    from lipsync_cli.cli import main

    with pytest.raises(SystemExit) as exited:
        main(args)
    return exited.value.code


def _train_generator(synth, run, expert) -> None:
    root, lists = synth
    args = ["train", "generator", "--arch", "wav2lip", "--no-gan", "--data", str(root)]
    args += ["--train-list", str(lists["train"]), "--val-list", str(lists["val"]), "--out", str(run)]
    args += ["--syncnet", str(expert), "--steps", "1", "--batch-size", "1"]
    args += ["--eval-batches", "1", "--eval-every", "1", "--keep-every", "1", "--workers", "0", "--device", "cpu"]
    args += ["--no-tensorboard"]
    assert _cli(args + ["-q"]) == 0


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory, fake_ckpt):
    """trained(lead) -> run directory of a 2-step generator trained with GeneratorDataset.lead = lead."""
    runs = {}

    def get(lead: int):
        if lead not in runs:
            run = tmp_path_factory.mktemp(f"lead{lead}")
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(GeneratorDataset, "lead", lead)
                _train_generator(synth, run, fake_ckpt("syncnet_color"))
            runs[lead] = run
        return runs[lead]

    return get


class _Pick:
    """A stand-in for build()'s rng: its first choice (the window start) is ``s``, later ones the first
    option."""

    def __init__(self, s: int):
        self.s, self.calls = s, 0

    def choice(self, options):
        self.calls += 1
        return self.s if self.calls == 1 else options[0]


def _training_windows(root, lead: int) -> dict[int, torch.Tensor]:
    """frame -> the (80, 16) mel window GeneratorDataset (with ``lead``) pairs with that frame of CLIP."""
    ds = GeneratorDataset(ClipStore(root, [CLIP], FPS, mel_cache=False), seed=0)
    ds.lead = lead
    out: dict[int, torch.Tensor] = {}
    for s in map(int, ds.starts(0)):
        _x, indiv, _mel, y = ds.build(0, _Pick(s))  # indiv (T, 1, 80, 16), y (3, T, 96, 96)
        assert torch.equal(y, torch.from_numpy(ds.store.window(0, s).transpose(3, 0, 1, 2)))  # window at s
        for t in range(SYNC_T):
            if s + t in out:
                assert torch.equal(out[s + t], indiv[t, 0])  # a frame has one window, whatever the start
            out[s + t] = indiv[t, 0]
    return out


def _dubbed_windows(root, ckpt, tmp_path, monkeypatch) -> torch.Tensor:
    """(frames, 80, 16): the mel windows `lipsync dub` feeds the generator, in frame order, for a video made of
    CLIP's face crops dubbed with CLIP's own audio."""
    import cv2

    from lipsync_cli.models.wav2lip import Wav2Lip
    from lipsync_cli.train.synthetic import write_mp4

    d = root / CLIP
    video = tmp_path / "clip.mp4"
    write_mp4(video, [cv2.imread(str(d / f"{i}.jpg")) for i in range(N_FRAMES)], FPS, None)
    seen: list[torch.Tensor] = []
    encode_audio = Wav2Lip.encode_audio  # what forward and forward_rows (the dub's) both feed the windows to

    def recording(self, mel):
        seen.append(mel.detach().float().cpu().clone())  # (B, 1, 80, 16)
        return encode_audio(self, mel)

    monkeypatch.setattr(Wav2Lip, "encode_audio", recording)
    out = tmp_path / "dubbed.mp4"
    # --silence model: every frame's own window reaches the generator (hold would give pauses the silent one)
    args = ["dub", str(video), str(d / "audio.wav"), "-o", str(out), "--checkpoint", str(ckpt), "--silence", "model"]
    # fp32: a bf16 model (the default on bf16 CPUs) sees the windows rounded to bf16; which window is the question
    assert _cli(args + ["--box", "0", "0", "96", "96", "--device", "cpu", "--precision", "fp32", "-q"]) == 0
    return torch.cat(seen)[:, 0]


@pytest.mark.slow
@pytest.mark.parametrize("lead", [GeneratorDataset.lead, 1], ids=["default", "lead1"])
def test_dub_feeds_each_frame_its_training_window(synth, trained, tmp_path, monkeypatch, lead):
    """Train (real CLI) -> dub (real CLI): every frame that has a training window gets exactly that window.

    With another lead in the dataset (1), the checkpoint carries it and dub follows: the lead has one home."""
    root, _ = synth
    run = trained(lead)
    dubbed = _dubbed_windows(root, run / "best.pt", tmp_path, monkeypatch)
    assert dubbed.shape == (N_FRAMES, 80, 16)
    expected = _training_windows(root, lead)
    assert len(expected) >= 20
    wrong = [f for f, w in sorted(expected.items()) if not torch.equal(dubbed[f], w)]
    assert not wrong, f"frames dubbed with another window than in training: {wrong}"
    for name in ("last.pt", "best.pt", "step_0000001.pt"):
        assert torch.load(run / name, weights_only=True)["mel_lead"] == lead, name


def _our_generator_file(path, **extra):
    """A generator file of ours (random weights) with ``extra`` top-level keys."""
    from lipsync_cli.checkpoint import make_checkpoint
    from lipsync_cli.models import build_generator

    model = build_generator("wav2lip", {})
    model.arch = "wav2lip"
    torch.save(make_checkpoint(model, optimizers={}, step=5, epoch=1, **extra), path)
    return path


def test_checkpoint_lead_defaults(fake_ckpt, tmp_path):
    """A generator file of ours without ``mel_lead`` (first release) means 2, one with it means its value, an
    upstream Wav2Lip file means 0 (what `lipsync dub` then uses, via load_generator)."""
    from lipsync_cli.checkpoint import load_generator

    assert load_generator(_our_generator_file(tmp_path / "legacy.pt")).mel_lead == 2
    assert load_generator(_our_generator_file(tmp_path / "lead1.pt", mel_lead=1)).mel_lead == 1
    assert load_generator(fake_ckpt("wav2lip")).mel_lead == 0


@pytest.mark.parametrize("stored, exported", [(None, 2), (1, 1)])
def test_train_export_keeps_the_lead(tmp_path, stored, exported):
    """`lipsync train export` writes the upstream container plus ``mel_lead`` (upstream scripts ignore it)."""
    extra = {} if stored is None else {"mel_lead": stored}
    ckpt = _our_generator_file(tmp_path / "last.pt", **extra)
    out = tmp_path / "wav2lip.pth"
    assert _cli(["train", "export", str(ckpt), str(out)]) == 0
    obj = torch.load(out, weights_only=True)
    assert obj["mel_lead"] == exported
    assert obj["optimizer"] is None and obj["global_step"] == 5 and "format" not in obj


def test_exported_generator_dubs_with_its_lead(tmp_path):
    from lipsync_cli.checkpoint import load_generator

    out = tmp_path / "wav2lip.pth"
    assert _cli(["train", "export", str(_our_generator_file(tmp_path / "last.pt", mel_lead=1)), str(out)]) == 0
    assert load_generator(out).mel_lead == 1


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_import_and_export_keep_the_lead(tmp_path, suffix, fake_ckpt):
    """An upstream file imported stays at Wav2Lip's indexing (0), not our legacy 2; an export of ours keeps its
    lead, also through safetensors metadata; a first-release file of ours (no key) stays at 2."""
    from lipsync_cli.checkpoint import export_checkpoint, import_checkpoint, load_generator

    imported = tmp_path / f"imported{suffix}"
    import_checkpoint(fake_ckpt("wav2lip"), imported)
    assert load_generator(imported).mel_lead == 0
    for lead, expect in ((1, 1), (None, 2)):
        exported = tmp_path / f"exported_{lead}{suffix}"
        export_checkpoint(_our_generator_file(tmp_path / f"ours_{lead}.pt", mel_lead=lead), exported)
        assert load_generator(exported).mel_lead == expect
