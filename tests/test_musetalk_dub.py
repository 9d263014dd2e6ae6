"""`lipsync dub --arch musetalk` (issue 21): MuseTalk 1.5 through the dub engine on real clips of ../shared/testmedia,
with the fake release of tests/musetalk_fakes.py (the small UNet and a tiny VAE: the shapes MuseTalk's, the sizes
a test's) installed where a user's download goes: ``$LIPSYNC_HOME/musetalk/...`` in the registry's pack layout.

What is checked: frame count and duration, that only the pixels inside the blend mask of MuseTalk's crop box
change, a still image encodes its reference once, --ref-face/--speaker with one audio per person, ProRes .mov, a
`lipsync batch` row, `lipsync eval lse` on the dub, the one-line errors (missing weights, wrong options, train).
"""

from __future__ import annotations

import numpy as np
import pytest
from checks import read_frames, region_changes
from conftest import media
from synth import make_audio, make_image, run_ffmpeg
from typer.testing import CliRunner

from lipsync_cli.errors import BadOption

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

# the fixtures of the two-people clip (SCRFD boxes, the fake ArcFace), shared with the Wav2Lip speaker tests
from tests.test_speakers import FACES, NOISE, _dub_options, _setup, fake_arcface, models, two_people, two_track  # noqa: E402, F401, I001

CLIP = "sadtalker_WDA_KatieHill_000.mp4"  # 512x512, 25 fps, one face in the middle
BOX = (128, 96, 384, 416)
runner = CliRunner()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A user's cache with the fake MuseTalk release in it (what `lipsync weights download musetalk` writes), set
    as $LIPSYNC_HOME for this module's tests, offline."""
    from musetalk_fakes import write_fake_release

    root = tmp_path_factory.mktemp("lipsync_home")
    write_fake_release(root / "musetalk", small=True, tiny_vae=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIPSYNC_HOME", str(root))
        mp.setenv("LIPSYNC_OFFLINE", "1")
        yield root


@pytest.fixture(scope="module")
def model(home):
    """MuseTalk loaded the way `dub --arch musetalk` loads it (the registry names resolved in the cache)."""
    from lipsync_cli.dub import DubOptions, load_dub_generator

    return load_dub_generator(DubOptions(arch="musetalk", precision="fp32"), "cpu")


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """0.5 s of real speech: 13 frames at 25 fps."""
    out = tmp_path_factory.mktemp("mt_speech") / "speech.wav"
    run_ffmpeg(["-i", str(media("retalking_2.wav")), "-t", "0.5", str(out)])
    return out


def _options(**kw):
    from lipsync_cli.dub import DubOptions

    return DubOptions(**{"arch": "musetalk", "device": "cpu", "precision": "fp32", "batch_size": 8, **kw})


@pytest.fixture(scope="module")
def dubbed(model, speech, tmp_path_factory):
    """The real clip dubbed with a fixed box, every output frame kept before encoding."""
    from lipsync_cli.dub import dub

    out = tmp_path_factory.mktemp("mt_dub") / "out.mp4"
    kept: dict[int, np.ndarray] = {}
    result = dub(media(CLIP), speech, out, _options(box=BOX), model=model,
                 frame_sink=lambda i, f: kept.__setitem__(i, f.copy()))
    return {"out": out, "result": result, "frames": [kept[i] for i in sorted(kept)]}


def test_crop_box_follows_upstreams_rule_on_our_box():
    """Our box's centre stands for landmark 29: the box, 10 px more below the chin (clamped); the shift moves the
    top by twice itself; a shift leaving no box falls back to the detector box (as upstream)."""
    from lipsync_cli.musetalk_dub import crop_box

    assert crop_box(BOX, 512) == (128, 96, 384, 426)
    assert crop_box(BOX, 420) == (128, 96, 384, 420)
    assert crop_box(BOX, 512, bbox_shift=5) == (128, 106, 384, 426)
    assert crop_box(BOX, 512, bbox_shift=-100) == (128, 0, 384, 426)
    assert crop_box(BOX, 512, bbox_shift=400) == (128, 96, 384, 426)


def test_a_real_clip_changes_only_the_blend_mask_of_the_crop_box(dubbed):
    from lipsync_cli.blend import mouth_mask
    from lipsync_cli.media.probe import probe

    res, got = dubbed["result"], dubbed["frames"]
    info = probe(dubbed["out"])
    assert res.frames == len(got) == info.n_frames == 13 and res.faces == 13
    assert info.duration == pytest.approx(13 / 25, abs=0.02) and info.has_audio
    src = read_frames(media(CLIP), 13)
    x1, y1, x2, y2 = 128, 96, 384, 426  # crop_box(BOX): what MuseTalk redraws
    mask = mouth_mask(x2 - x1, y2 - y1)[:, :, 0]
    outside = np.ones(src[0].shape[:2], bool)
    outside[y1:y2, x1:x2] = mask == 0
    for s, g in zip(src, got):
        d = np.abs(g.astype(np.int16) - s.astype(np.int16)).max(axis=2)
        assert d[outside].max() == 0  # exactly the source outside the mask (before encoding)
    ch = region_changes(src, got, (x1, y1, x2, y2))
    assert ch["mouth"] > 4 * NOISE and ch["upper"] == 0, ch


def test_eval_lse_scores_a_musetalk_dub(dubbed, fake_ckpt):
    """LSE reads the output video only: a MuseTalk dub is scored like any other."""
    from lipsync_cli.evaluate import lse as L
    from lipsync_cli.models.syncnet_v2 import load_syncnet_v2

    res = L.score_video(dubbed["out"], load_syncnet_v2(fake_ckpt("syncnet_v2")), L.LSEOptions(mode="crop"))
    assert res.ok and res.n_frames == 13 and np.isfinite(res.lse_d) and len(res.curve) == 31


def test_a_still_image_encodes_its_reference_once(model, speech, tmp_path, monkeypatch):
    from lipsync_cli.dub import dub

    image = make_image(tmp_path / "face.png", (160, 120))
    encoded = []
    real = model.encode_reference
    monkeypatch.setattr(model, "encode_reference", lambda faces, **kw: encoded.append(len(faces)) or real(faces, **kw))
    res = dub(image, speech, tmp_path / "o.mp4", _options(box=(40, 20, 120, 100)), model=model)
    assert res.frames == res.faces == 13
    assert sum(encoded) == 1  # one (source frame, box): one VAE encode for the 13 frames (and the held mouth)


def test_cli_dub_prores_finds_the_downloaded_weights(home, speech, tmp_path):
    """The command a user types, no weight flag: the files are found in the cache; ProRes 422 in .mov."""
    from lipsync_cli.cli.app import app
    from lipsync_cli.media.probe import probe

    out = tmp_path / "out.mov"
    r = runner.invoke(app, ["dub", str(media(CLIP)), str(speech), "-o", str(out), "--arch", "musetalk",
                            "--vcodec", "prores_ks", "--box", *map(str, BOX), "--bbox-shift", "2", "--precision",
                            "fp32", "--batch-size", "8", "--quiet"])
    assert r.exit_code == 0, r.output
    info = probe(out)
    assert info.codec == "prores" and info.n_frames == 13 and info.has_audio
    ch = region_changes(read_frames(media(CLIP), 13), read_frames(out), (128, 100, 384, 426))
    assert ch["mouth"] > 4 * NOISE and ch["outside"] < NOISE, ch


def test_missing_weights_offline_name_the_download(tmp_path, speech, monkeypatch, capsys):
    from lipsync_cli.cli import run

    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("LIPSYNC_OFFLINE", "1")
    monkeypatch.delenv("LIPSYNC_DEBUG", raising=False)
    code = run(["dub", str(media(CLIP)), str(speech), "-o", str(tmp_path / "o.mp4"), "--arch", "musetalk",
                "--box", *map(str, BOX)])
    err = capsys.readouterr().err.strip()
    assert code == 5 and not (tmp_path / "o.mp4").exists(), err  # WeightsNotFound
    assert "lipsync weights download musetalk" in err and len(err.splitlines()) == 1, err


def test_wrong_option_pairs_are_one_line_errors():
    from lipsync_cli.dub import DubOptions

    with pytest.raises(BadOption, match="add --arch musetalk"):
        DubOptions(bbox_shift=3).validate()
    with pytest.raises(BadOption, match="lipsync weights download musetalk"):
        DubOptions(arch="musetalk", checkpoint="x.pth").validate()


def test_train_refuses_musetalk_in_one_line(tmp_path, capsys, monkeypatch):
    from lipsync_cli.cli import run
    from lipsync_cli.cli.app import app

    monkeypatch.delenv("LIPSYNC_DEBUG", raising=False)
    code = run(["train", "generator", "--arch", "musetalk", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not trainable here" in err and len(err.splitlines()) == 1, err
    assert "not trainable here" in runner.invoke(app, ["train", "--help"]).output


@pytest.mark.slow
def test_two_speakers_each_driven_by_their_own_audio(model, two_people, two_track, fake_arcface, tmp_path,  # noqa: F811
                                                     monkeypatch):
    """--ref-face + --speaker per person: each face's audio windows are its own speaker's whisper windows; both
    mouths change."""
    from lipsync_cli.dub import dub
    from lipsync_cli.speakers import Reference, SpeakerSpec, load_voices

    a = make_audio(tmp_path / "a.wav", seconds=0.4, kind="speechlike")
    b = make_audio(tmp_path / "b.wav", seconds=0.6, kind="sine")
    setup = _setup(fake_arcface, speakers=(
        SpeakerSpec(audio=a, reference=Reference(photo=two_people["photos"]["left"]), name="left"),
        SpeakerSpec(audio=b, reference=Reference(photo=two_people["photos"]["right"]), name="right")))
    seen = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda lat, chunks: seen.extend(chunks) or real(lat, chunks))
    out = tmp_path / "out.mp4"
    options = _dub_options(fake_arcface, speakers=setup, track=two_track, silence="model", arch="musetalk")
    res = dub(two_people["clip"], None, out, options, model=model)
    assert res.frames == 15 and res.faces == 30  # 0.6 s at 25 fps: the longest track; both faces every frame
    voices = [model.audio_chunks(w, 25.0, 15) for w in load_voices(None, setup).wavs]
    owner = [[v for v in (0, 1) if any(np.array_equal(c, w) for w in voices[v])] for c in seen]
    assert [len(o) for o in owner] == [1] * 30  # every window is one voice's own
    assert sorted(o[0] for o in owner) == [0] * 15 + [1] * 15
    src, got = read_frames(two_people["clip"], 15), read_frames(out)
    for who in FACES:
        assert region_changes(src, got, FACES[who])["mouth"] > 4 * NOISE, who


@pytest.mark.slow
def test_a_batch_row_takes_arch_musetalk(home, speech, tmp_path):
    from lipsync_cli import DubOptions, run_batch
    from lipsync_cli.batch import BatchOptions
    from lipsync_cli.media.probe import probe

    clip = tmp_path / "clip.mp4"
    run_ffmpeg(["-i", str(media(CLIP)), "-t", "0.4", "-an", "-c:v", "libx264", "-preset", "ultrafast", str(clip)])
    man = tmp_path / "jobs.csv"
    man.write_text(f"video,audio,box,arch,bbox_shift\nclip.mp4,{speech},{' '.join(map(str, BOX))},musetalk,0\n")
    report = run_batch(man, BatchOptions(outdir=tmp_path / "out", dub=DubOptions(device="cpu", precision="fp32",
                                                                                  batch_size=8, offline=True)))
    outs = sorted((tmp_path / "out").rglob("*.mp4"))
    assert len(outs) == 1, report
    assert probe(outs[0]).n_frames == 13  # the audio's 0.5 s (the 0.4 s clip looped)
