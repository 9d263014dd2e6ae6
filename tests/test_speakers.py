"""Several people on screen: identity (--ref-face), one audio per speaker, the active speaker (--speaker auto),
the track file's embeddings and speaking scores, `lipsync detect --preview`.

Real faces come from ../shared (facerec_two_people.jpg made into a clip, the Hamilton clip with its cuts) and the
real SCRFD detector; the ArcFace model is tests/fake_arcface.py (the released file's format; its distances: the
same face 0.0-0.1, two people 0.5-0.9, so the tests use a threshold of 0.3), the generator a fake Wav2Lip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from checks import foreign_warnings

from lipsync_cli.errors import BadOption
from lipsync_cli.faces.track import Track, link_tracks, video_fingerprint
from lipsync_cli.speakers import (
    Reference,
    SpeakerSetup,
    SpeakerSpec,
    active_boxes,
    identity_boxes,
    mix_tracks,
    setup_from_options,
)
from tests.checks import read_frames, region_changes
from tests.conftest import SCRFD_ONNX, media
from tests.synth import ffmpeg_exe, make_audio, make_video

cv2 = pytest.importorskip("cv2")

FPS = 25
SIZE = (1126, 660)  # facerec_two_people.jpg, one row cropped for yuv420p
# SCRFD boxes of the two faces (px) and photos cropped around each (x1, y1, x2, y2)
FACES = {"left": (236, 25, 389, 223), "right": (787, 42, 942, 251)}
PHOTOS = {"left": (150, 0, 480, 300), "right": (700, 0, 1030, 320)}
FAKE_THRESHOLD = 0.3  # the fake ArcFace's scale (see the module docstring)
NOISE = 3.0  # grey levels of re-encoding noise


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lipsync_cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="session")
def fake_arcface(tmp_path_factory) -> Path:
    from tests.fake_arcface import write_fake_arcface

    return write_fake_arcface(tmp_path_factory.mktemp("arcface") / "w600k_r50.onnx")


@pytest.fixture(scope="session")
def models(fake_arcface, scrfd_onnx):
    from lipsync_cli.faces.identity import FaceEmbedder, IdentityModels, Landmarker

    return IdentityModels(FaceEmbedder(fake_arcface), Landmarker(scrfd_onnx, threads=1))


@pytest.fixture(scope="session")
def two_people(tmp_path_factory):
    """A 2 s clip of facerec_two_people.jpg (both faces in every frame) and photos cropped around each face."""
    folder = tmp_path_factory.mktemp("two_people")
    image = cv2.imread(str(media("facerec_two_people.jpg")))[: SIZE[1], : SIZE[0]]
    clip = folder / "two.mp4"
    args = [ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24",
            "-s", f"{SIZE[0]}x{SIZE[1]}", "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-preset", "ultrafast",
            "-crf", "18", "-pix_fmt", "yuv420p", str(clip)]
    subprocess.run(args, input=image.tobytes() * (2 * FPS), check=True, capture_output=True)
    photos = {}
    for who, (x1, y1, x2, y2) in PHOTOS.items():
        photos[who] = folder / f"{who}.png"
        cv2.imwrite(str(photos[who]), image[y1:y2, x1:x2])
    return {"clip": clip, "photos": photos, "folder": folder}


@pytest.fixture(scope="session")
def two_track(two_people, models):
    """The track file of the two-people clip, with the fake ArcFace's embeddings in it."""
    from lipsync_cli.faces import load_detector
    from lipsync_cli.faces.track import track_video
    from lipsync_cli.speakers import ensure_embeddings

    clip = two_people["clip"]
    track = track_video(clip, load_detector("insightface", SCRFD_ONNX, det_size=320, threads=1), det_size=320,
                        every=8)
    ensure_embeddings(clip, track, models)
    path = two_people["folder"] / "track.json"
    track.save(path)
    return path


@pytest.fixture(scope="session")
def generator(fake_ckpt):
    from lipsync_cli.checkpoint import load_generator

    return load_generator(fake_ckpt("wav2lip"))


def recorder(model):
    """The generator, wrapped so that it keeps every batch it is given: (mels (B, 1, 80, 16), faces (B, 6, 96,
    96)) in ``.batches``."""
    import copy

    import torch

    class Recorder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = copy.deepcopy(inner)
            self.batches: list[tuple[np.ndarray, np.ndarray]] = []

        def forward(self, mels, faces):
            self.batches.append((mels.float().numpy().copy(), faces.float().numpy().copy()))
            return self.inner(mels, faces)

        def __deepcopy__(self, memo):  # the dub folds BatchNorm into a copy: keep recording into this one
            return self

    return Recorder(model)


def _dub_options(fake_arcface, **kw):
    from lipsync_cli.dub import DubOptions

    base = dict(detector="insightface", detector_weights=SCRFD_ONNX, det_size=320, device="cpu", precision="fp32",
                batch_size=8, detect_every=4)
    base.update(kw)
    return DubOptions(**base)


def _setup(fake_arcface, **kw) -> SpeakerSetup:
    return SpeakerSetup(recognition_weights=str(fake_arcface), identity_threshold=FAKE_THRESHOLD, **kw)


def _centre_x(box) -> float:
    return (box[0] + box[2]) / 2


# ------------------------------------------------------------------------------------------------------------
# matching, mixing, parsing: no media


def test_identity_matching_with_given_embeddings():
    """Each face track goes to the nearest reference within the threshold; a face far from every reference is
    nobody; two tracks of one person in one frame: the nearer one is dubbed there."""
    rng = np.random.default_rng(0)
    a, b, c = (v / np.linalg.norm(v) for v in rng.normal(size=(3, 512)))
    n = 10
    faces = [np.array([[10, 10, 60, 60, 0.9], [200, 10, 250, 60, 0.9], [400, 10, 450, 60, 0.9]], np.float32)
             for _ in range(n)]
    track = Track(640, 360, 25.0, faces, cuts=[])
    fts = link_tracks(track.faces, cuts=track.cuts)
    assert len(fts) == 3
    noisy = lambda v, s: v + s * rng.normal(size=512) / np.sqrt(512)  # noqa: E731
    # track 0 is A, track 1 is B, track 2 a stranger (c)
    raws, segs, dist = identity_boxes(track, fts, [noisy(a, 0.1), noisy(b, 0.2), c], np.stack([a, b]), [0.3, 0.3])
    assert dist.shape == (3, 2) and dist[0, 0] < 0.05 and dist[1, 1] < 0.1 and dist[2].min() > 0.8
    assert all(r is not None and r[0] == 10 for r in raws[0])
    assert all(r is not None and r[0] == 200 for r in raws[1])
    assert segs[0] == [0] * n and segs[1] == [1] * n
    # both A and a look-alike of A within the threshold: the nearer track wins in every frame
    raws, _, _ = identity_boxes(track, fts, [noisy(a, 0.5), noisy(a, 0.05), c], np.stack([a]), [0.5])
    assert all(r is not None and r[0] == 200 for r in raws[0])
    # beyond the threshold: nobody
    raws, _, _ = identity_boxes(track, fts, [b, c, b], np.stack([a]), [0.3])
    assert all(r is None for r in raws[0])
    # a look-alike on screen at the same time as A, over a part of A's frames: never A, not even where A is
    # missing
    faces = [np.array([[10, 10, 60, 60, 0.9]] * (i % 4 != 0) + [[200, 10, 250, 60, 0.9]] * (i >= 4), np.float32)
             .reshape(-1, 5) for i in range(n)]
    track = Track(640, 360, 25.0, faces, cuts=[])
    fts = link_tracks(track.faces, cuts=track.cuts, max_gap=3)
    assert [ft.boxes[0][0] for ft in fts] == [10, 200]
    raws, _, _ = identity_boxes(track, fts, [noisy(a, 0.05), noisy(a, 0.4)], np.stack([a]), [0.5])
    assert [None if r is None else int(r[0]) for r in raws[0]] == [None if i % 4 == 0 else 10 for i in range(n)]


def test_mix_is_the_sum_with_headroom():
    t = np.linspace(0, 1, 16000, endpoint=False)
    quiet = [0.2 * np.sin(2 * np.pi * 220 * t), 0.1 * np.sin(2 * np.pi * 330 * t[:8000])]
    mixed = mix_tracks(quiet)
    assert len(mixed) == 16000  # as long as the longest
    expected = quiet[0].copy()
    expected[:8000] += quiet[1]
    np.testing.assert_allclose(mixed, expected, atol=1e-6)  # no gain when there is headroom
    loud = mix_tracks([0.9 * np.sin(2 * np.pi * 220 * t), 0.9 * np.sin(2 * np.pi * 220 * t)])
    assert np.max(np.abs(loud)) == pytest.approx(10 ** (-1 / 20), rel=1e-4)  # scaled to -1 dBFS, never clipped
    np.testing.assert_allclose(loud / np.max(np.abs(loud)), np.sin(2 * np.pi * 220 * t) / np.max(
        np.abs(np.sin(2 * np.pi * 220 * t))), atol=1e-5)


def test_speaker_descriptions_from_options_and_yaml(tmp_path):
    for name in ("a.wav", "b.wav", "a.jpg", "b.jpg", "mix.wav"):
        (tmp_path / name).write_bytes(b"x")
    setup = setup_from_options(speaker=[str(tmp_path / "a.wav"), str(tmp_path / "b.wav")],
                               ref_face=[str(tmp_path / "a.jpg"), f"{tmp_path / 'b.jpg'}@12.5"])
    assert [s.audio.name for s in setup.speakers] == ["a.wav", "b.wav"]
    assert setup.speakers[0].reference == Reference(photo=tmp_path / "a.jpg")
    assert setup.speakers[1].reference == Reference(video=tmp_path / "b.jpg", seconds=12.5)
    setup.validate()
    assert setup_from_options(ref_face=[str(tmp_path / "a.jpg")]).speakers == (
        SpeakerSpec(audio=None, reference=Reference(photo=tmp_path / "a.jpg")),)
    assert setup_from_options(ref_box=(1, 2, 30, 40), ref_frame=7).speakers[0].reference == Reference(
        box=(1.0, 2.0, 30.0, 40.0), frame=7)
    assert setup_from_options(speaker=["auto"]).auto
    assert setup_from_options() is None and setup_from_options(ref_box=(1, 2, 3, 4)) is None  # the old --ref-box
    with pytest.raises(BadOption, match="2 --speaker track"):
        setup_from_options(speaker=["a.wav", "b.wav"], ref_face=["a.jpg"])
    with pytest.raises(BadOption, match="--ref-frame needs --ref-box"):
        setup_from_options(ref_frame=3)
    with pytest.raises(BadOption, match="auto"):
        setup_from_options(speaker=["auto", "a.wav"])
    (tmp_path / "speakers.yaml").write_text(
        "mix: mix.wav\nspeakers:\n  - name: alice\n    audio: a.wav\n    ref_face: a.jpg\n"
        "  - name: bob\n    audio: b.wav\n    ref_box: [10, 20, 110, 140]\n    ref_frame: 5\n    threshold: 0.4\n")
    setup = setup_from_options(speakers_file=tmp_path / "speakers.yaml", identity_threshold=0.5)
    setup.validate()
    assert setup.mix == tmp_path / "mix.wav" and setup.identity_threshold == 0.5
    assert [s.name for s in setup.speakers] == ["alice", "bob"] and setup.thresholds() == [0.5, 0.4]
    assert setup.speakers[1].reference == Reference(box=(10.0, 20.0, 110.0, 140.0), frame=5)
    (tmp_path / "bad.yaml").write_text("speakers:\n  - audio: a.wav\n    face: a.jpg\n")
    with pytest.raises(BadOption, match="unknown fields"):
        SpeakerSetup.from_yaml(tmp_path / "bad.yaml")


def test_auto_follows_the_higher_score_per_window():
    """Given the SyncNet scores of two face tracks, each window dubs the one that scores higher, and nobody
    where both are below the minimum."""
    n, w = 75, 25
    faces = [np.array([[10, 10, 60, 60, 0.9], [200, 10, 250, 60, 0.9]], np.float32) for _ in range(n)]
    speaking = [np.array([3.0, 1.5] if i < w else [1.5, 4.0] if i < 2 * w else [0.5, 0.8], np.float32)
                for i in range(n)]
    track = Track(640, 360, 25.0, faces, cuts=[], speaking=speaking)
    fts = link_tracks(track.faces, cuts=track.cuts)
    raw, seg = active_boxes(track, fts, window=w, min_activity=1.0)
    assert [r[0] for r in raw[:w]] == [10] * w
    assert [r[0] for r in raw[w:2 * w]] == [200] * w
    assert raw[2 * w:] == [None] * w
    assert seg[:w] == [0] * w and seg[w:2 * w] == [1] * w


# ------------------------------------------------------------------------------------------------------------
# the track file


def test_track_file_round_trips_embeddings_and_scores_and_refuses_another_video(tmp_path):
    a = make_video(tmp_path / "a.mp4", seconds=0.4, size=(64, 48))
    b = make_video(tmp_path / "b.mp4", seconds=0.4, size=(64, 48), extra=["-vf", "negate"])
    assert video_fingerprint(a) == video_fingerprint(a) != video_fingerprint(b)
    faces = [np.array([[1, 2, 30, 40, 0.9], [33, 2, 60, 40, 0.8]], np.float32) for _ in range(10)]
    emb = {0: np.stack([np.linspace(-1, 1, 512), np.full(512, np.nan)]).astype(np.float32),
           7: np.stack([np.full(512, np.nan), np.linspace(1, -1, 512)]).astype(np.float32)}
    speaking = [np.array([0.5 * i, np.nan], np.float32) for i in range(10)]
    track = Track(64, 48, 25.0, faces, source=str(a), cuts=[5], fingerprint=video_fingerprint(a), embeddings=emb,
                  embedder="w600k_r50.onnx:123", speaking=speaking)
    path = tmp_path / "track.json"
    track.save(path)
    data = json.loads(path.read_text())
    assert data["version"] == 3 and data["fingerprint"] == video_fingerprint(a)
    back = Track.load(path)
    assert back.embedder == "w600k_r50.onnx:123" and sorted(back.embeddings) == [0, 7]
    for f in (0, 7):
        np.testing.assert_allclose(back.embeddings[f], emb[f], atol=1e-5)  # NaN rows stay NaN
    np.testing.assert_allclose(np.stack(back.speaking), np.stack(speaking), atol=1e-4)
    assert back.cuts == [5] and back.fingerprint == track.fingerprint
    back.check_matches(64, 48, 10, video_fingerprint(a))
    with pytest.raises(BadOption, match="another video"):
        back.check_matches(64, 48, 10, video_fingerprint(b))
    # a version-2 file (no fingerprint, no embeddings) still loads, and is only checked by size and length
    del data["fingerprint"], data["embeddings"], data["speaking"]
    data["version"] = 2
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    v2 = Track.load(old)
    assert v2.embeddings is None and v2.speaking is None and v2.fingerprint is None
    v2.check_matches(64, 48, 10, video_fingerprint(b))
    # rows that do not match the frame's faces are refused with the file's name
    data["embeddings"] = {"model": "x", "frames": {"3": [[1.0, 2.0]]}}
    old.write_text(json.dumps(data))
    with pytest.raises(BadOption, match="old.json"):
        Track.load(old)
    # the dub refuses a track from another video of the same size and length, before it loads any weights
    # (the checkpoint named here does not exist: the track is what is reported)
    audio = make_audio(tmp_path / "s.wav", seconds=0.4)
    res = run_cli("dub", str(b), str(audio), "-o", str(tmp_path / "out.mp4"), "--track", str(path), "--offline",
                  "--checkpoint", str(tmp_path / "not-downloaded.pth"), "--device", "cpu")
    assert res.returncode == 2 and "another video" in res.stderr, res.stderr
    assert not (tmp_path / "out.mp4").exists()


# ------------------------------------------------------------------------------------------------------------
# real faces


def test_fake_arcface_tells_the_two_people_apart(two_people, models):
    from lipsync_cli.faces.identity import _read_image, cosine_distance, embed_reference

    image = read_frames(two_people["clip"], 1)[0]
    boxes = np.array([FACES["left"], FACES["right"]], np.float64)
    emb = models.embed_boxes(image, boxes)  # (2, 512)
    assert emb.shape == (2, 512) and np.all(np.isfinite(emb))
    refs = np.stack([embed_reference(_read_image(two_people["photos"][w]), models) for w in ("left", "right")])
    d = cosine_distance(refs, emb)
    assert d[0, 0] < 0.1 and d[1, 1] < 0.1, d
    assert d[0, 1] > 0.4 and d[1, 0] > 0.4, d


def test_ref_face_dubs_only_that_person(two_people, fake_arcface, generator, tmp_path):
    from lipsync_cli.dub import dub

    audio = make_audio(tmp_path / "speech.wav", seconds=1.0)
    out = tmp_path / "out.mp4"
    setup = _setup(fake_arcface, speakers=(SpeakerSpec(reference=Reference(photo=two_people["photos"]["left"])),))
    result = dub(two_people["clip"], audio, out, _dub_options(fake_arcface, speakers=setup), model=generator)
    assert result.frames == 25 and result.faces == 25 and not result.no_face_frames
    src, got = read_frames(two_people["clip"], 25), read_frames(out)
    left, right = region_changes(src, got, FACES["left"]), region_changes(src, got, FACES["right"])
    assert left["mouth"] > 4 * NOISE, left
    assert right["mouth"] < NOISE and right["upper"] < NOISE, right  # the other person keeps their mouth
    # the same person named by a box on a frame of the video itself
    setup = _setup(fake_arcface, speakers=(SpeakerSpec(reference=Reference(box=FACES["right"], frame=3)),))
    dub(two_people["clip"], audio, out, _dub_options(fake_arcface, speakers=setup), model=generator)
    got = read_frames(out)
    assert region_changes(src, got, FACES["right"])["mouth"] > 4 * NOISE
    assert region_changes(src, got, FACES["left"])["mouth"] < NOISE


@pytest.mark.slow
def test_two_speakers_each_driven_by_their_own_track(two_people, two_track, fake_arcface, generator, tmp_path):
    """Each face's generator input is its own speaker's mel; both mouths change; the output audio is the mix,
    as long as the longest track."""
    from lipsync_cli.audio import load_audio, mel_start, melspectrogram
    from lipsync_cli.blend import crop_face, prepare_batch
    from lipsync_cli.constants import MEL_WINDOW
    from lipsync_cli.dub import dub
    from lipsync_cli.media.probe import probe

    a = make_audio(tmp_path / "a.wav", seconds=0.8, kind="speechlike")
    b = make_audio(tmp_path / "b.wav", seconds=1.2, kind="sine")
    setup = _setup(fake_arcface, speakers=(
        SpeakerSpec(audio=a, reference=Reference(photo=two_people["photos"]["left"]), name="left"),
        SpeakerSpec(audio=b, reference=Reference(photo=two_people["photos"]["right"]), name="right")))
    out = tmp_path / "out.mp4"
    rec = recorder(generator)
    # silence="model": every face's input is its speaker's mel window (the tone tracks are no speech to the VAD)
    options = _dub_options(fake_arcface, speakers=setup, track=two_track, silence="model")
    result = dub(two_people["clip"], None, out, options, model=rec)
    assert result.frames == 30  # 1.2 s at 25 fps: the longest track
    assert result.faces == 60  # two faces in every frame
    # which crop is whose: the first frame's faces, cropped as the dub crops them (boxes are constant here)
    mels = {}
    n = 30 * 16000 // 25
    for who, path in (("left", a), ("right", b)):
        wav = load_audio(path)
        mels[who] = melspectrogram(np.pad(wav, (0, n - len(wav))))
    starts = mel_start(np.arange(30), 25.0, lead=0, n_mel=mels["left"].shape[1])
    windows = {who: [m[:, s:s + MEL_WINDOW] for s in starts] for who, m in mels.items()}
    seen = {"left": 0, "right": 0}
    frame0 = read_frames(two_people["clip"], 1)[0]
    for batch_mels, batch_faces in rec.batches:
        for mel, face in zip(batch_mels, batch_faces):
            # the reference half of the input (channels 3..5) is the face itself: whose face it is
            diffs = {}
            for who in FACES:
                ref = prepare_batch(crop_face(frame0, FACES[who])[None])[0]
                diffs[who] = float(np.abs(face[3:] - ref[3:]).mean())
            who = min(diffs, key=diffs.get)
            assert diffs[who] < 0.5 * max(diffs.values()), diffs
            assert any(np.array_equal(mel[0], w) for w in windows[who]), who  # its own speaker's mel
            assert not any(np.array_equal(mel[0], w) for w in windows["right" if who == "left" else "left"])
            seen[who] += 1
    assert seen == {"left": 30, "right": 30}
    src, got = read_frames(two_people["clip"], 30), read_frames(out)
    for who in FACES:
        assert region_changes(src, got, FACES[who])["mouth"] > 4 * NOISE, who
    # the output's audio: the two tracks summed, 1.2 s long
    info = probe(out)
    assert info.audio is not None and info.audio.duration == pytest.approx(1.2, abs=0.06)
    heard = load_audio(out)[:16000]
    expected = mix_tracks([load_audio(a), load_audio(b)])[:16000]
    assert np.corrcoef(heard[:len(expected)], expected[:len(heard)])[0, 1] > 0.95
    assert info.audio.channels == 2  # the tracks are stereo: so is their mix
    left, right = load_audio(out, channels=2)[:16000].T
    assert np.corrcoef(left, right)[0, 1] > 0.95  # a stereo mix, not one channel and silence
    # --mix: that file is the output's audio instead
    mix = make_audio(tmp_path / "mix.wav", seconds=1.2, kind="silence")
    dub(two_people["clip"], None, out, replace(options, speakers=replace(setup, mix=mix)), model=generator)
    assert np.max(np.abs(load_audio(out))) < 1e-3
    # AUDIO beside per-speaker tracks is the output's sound (as --mix), never ignored; both at once is refused
    dub(two_people["clip"], mix, out, options, model=generator)
    assert np.max(np.abs(load_audio(out))) < 1e-3
    with pytest.raises(BadOption, match="both give the output's sound"):
        dub(two_people["clip"], a, out, replace(options, speakers=replace(setup, mix=mix)), model=generator)


def test_mono_speaker_tracks_mix_to_mono(tmp_path):
    from lipsync_cli.media.probe import probe_audio
    from lipsync_cli.speakers import Voices, output_audio

    a = make_audio(tmp_path / "a.wav", seconds=0.5, channels=1)
    b = make_audio(tmp_path / "b.wav", seconds=0.5, channels=1)
    with output_audio(Voices([], 8000, None, (a, b))) as path:
        assert probe_audio(path).channels == 1
    c = make_audio(tmp_path / "c.wav", seconds=0.5, channels=2)
    with output_audio(Voices([], 8000, None, (a, c))) as path:
        assert probe_audio(path).channels == 2


@pytest.mark.slow
def test_ref_face_on_the_hamilton_clip_across_a_cut(fake_arcface, generator, tmp_path):
    """2.6 s of the Hamilton clip around its cut at 2.73 s: a crowd shot (several faces), then a close shot of
    one man. The reference photo is that man, cropped from a frame of the close shot: before the cut nothing
    changes (he is not there, the others are other people), after it his mouth does, in every frame."""
    from lipsync_cli.dub import dub
    from lipsync_cli.faces import load_detector
    from lipsync_cli.faces.track import track_video

    clip = tmp_path / "ham.mp4"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-ss", "2.0", "-i",
                    str(media("facerec_short_hamilton_clip.mp4")), "-t", "2.6", "-c:v", "libx264", "-preset",
                    "ultrafast", "-crf", "12", "-an", str(clip)], check=True, capture_output=True)
    track = track_video(clip, load_detector("insightface", SCRFD_ONNX, det_size=320, threads=1), det_size=320,
                        every=4)
    assert len(track.cuts) == 1
    cut = track.cuts[0]
    frames = read_frames(clip)
    # the close shot's face: the largest detection in the middle of the second shot
    mid = (cut + len(frames)) // 2
    x1, y1, x2, y2 = (int(v) for v in max(track.faces[mid], key=lambda d: (d[2] - d[0]) * (d[3] - d[1]))[:4])
    pad = (x2 - x1) // 2
    photo = tmp_path / "him.png"
    cv2.imwrite(str(photo), frames[mid][max(0, y1 - pad):y2 + pad, max(0, x1 - pad):x2 + pad])
    track_path = tmp_path / "track.json"
    track.save(track_path)
    audio = make_audio(tmp_path / "speech.wav", seconds=2.6)
    out = tmp_path / "out.mp4"
    setup = _setup(fake_arcface, speakers=(SpeakerSpec(reference=Reference(photo=photo)),))
    result = dub(clip, audio, out, _dub_options(fake_arcface, speakers=setup, track=track_path), model=generator)
    got = read_frames(out)
    n = min(len(frames), len(got), result.frames)
    before = np.mean([np.abs(got[k].astype(int) - frames[k]).mean() for k in range(cut)])
    assert before < NOISE, before  # the crowd shot passes through: nobody there is him
    assert set(result.no_face_frames) >= set(range(cut))
    for k in range(cut, n):
        d = max(track.faces[k], key=lambda d: (d[2] - d[0]) * (d[3] - d[1]))
        bx = tuple(int(v) for v in d[:4])
        ch = region_changes([frames[k]], [got[k]], bx)
        assert ch["mouth"] > 2 * NOISE, (k, ch)
        assert ch["outside"] < NOISE, (k, ch)

    # the crowd shot alone: faces everywhere, but never him; the warning says so, not "no face found"
    crowd = tmp_path / "crowd.mp4"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-i", str(clip), "-frames:v",
                    str(min(cut, 12)), "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", str(crowd)],
                   check=True, capture_output=True)
    said: list[str] = []
    dub(crowd, audio, tmp_path / "crowd_out.mp4", _dub_options(fake_arcface, speakers=setup, silence="model"),
        model=generator, notify=said.append)
    assert f"warning: {crowd}: the dubbed person ({photo}) is not on screen in any frame; the video passes " \
        "through with the new audio" in said, said
    assert not [m for m in said if "no face found" in m], said


# ------------------------------------------------------------------------------------------------------------
# the command line: detect with embeddings, scores and a preview; dub --speaker auto from that track


@pytest.mark.slow
def test_detect_preview_scores_and_auto_dub(two_people, fake_arcface, fake_ckpt, tmp_path):
    clip = tmp_path / "talk.mp4"  # 1 s of the two people, with a sound track
    subprocess.run([ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-i", str(two_people["clip"]), "-f",
                    "lavfi", "-i", "sine=frequency=300:duration=1", "-t", "1", "-c:v", "copy", "-c:a", "aac",
                    str(clip)], check=True, capture_output=True)
    track_path, preview = tmp_path / "track.json", tmp_path / "preview.mp4"
    res = run_cli("detect", str(clip), "-o", str(track_path), "--detector", "insightface", "--detector-weights",
                  str(SCRFD_ONNX), "--det-size", "320", "--device", "cpu", "--identity", "--speaking",
                  "--syncnet", str(fake_ckpt("syncnet_v2")), "--recognition-weights", str(fake_arcface),
                  "--ref-face", str(two_people["photos"]["left"]), "--preview", str(preview), "--offline")
    assert res.returncode == 0, res.stderr
    assert foreign_warnings(res.stderr) == []  # insightface's `estimate is deprecated` stays with us
    track = Track.load(track_path)
    assert len(track) == 25 and track.fingerprint == video_fingerprint(clip)
    assert track.embedder == f"{fake_arcface.name}:{fake_arcface.stat().st_size}"
    assert track.embeddings and all(e.shape == (2, 512) for e in track.embeddings.values())
    assert track.speaking is not None and all(np.all(np.isfinite(s)) for s in track.speaking)
    src, drawn = read_frames(clip), read_frames(preview)
    assert len(drawn) == 25
    for who in FACES:  # a box is drawn around each face: its top edge changed, the face's middle did not
        x1, y1, x2, y2 = FACES[who]
        edge = np.abs(drawn[5][y1 - 2:y1 + 3, x1 + 10:x2 - 10].astype(int) - src[5][y1 - 2:y1 + 3, x1 + 10:x2 - 10])
        inner = np.abs(drawn[5][y1 + 60:y2 - 60, x1 + 40:x2 - 40].astype(int) -
                       src[5][y1 + 60:y2 - 60, x1 + 40:x2 - 40])
        assert edge.mean() > 20 and inner.mean() < NOISE, who
    # set the scores by hand (what a user may do): the right one speaks; dub --speaker auto from the track
    data = json.loads(track_path.read_text())
    for faces, row in zip(data["faces"], data["speaking"]):
        for k, f in enumerate(faces):
            row[k] = 5.0 if f[0] > SIZE[0] / 2 else 0.1
    track_path.write_text(json.dumps(data))
    audio = make_audio(tmp_path / "new.wav", seconds=1.0)
    out = tmp_path / "auto.mp4"
    res = run_cli("dub", str(clip), str(audio), "-o", str(out), "--checkpoint", str(fake_ckpt("wav2lip")),
                  "--track", str(track_path), "--speaker", "auto", "--device", "cpu", "--batch-size", "8",
                  "--offline", "-q")
    assert res.returncode == 0, res.stderr
    assert foreign_warnings(res.stderr) == []
    got = read_frames(out)
    assert region_changes(src, got, FACES["right"])["mouth"] > 4 * NOISE
    assert region_changes(src, got, FACES["left"])["mouth"] < NOISE


@pytest.mark.slow
def test_auto_dub_switches_face_with_the_scores(two_people, generator, tmp_path):
    """--speaker auto from a track whose SyncNet scores are given: the left face speaks in the first second,
    the right one in the next: each window's mouth is the higher-scored face's, the other face is untouched."""
    from lipsync_cli.dub import dub
    from lipsync_cli.faces import load_detector
    from lipsync_cli.faces.track import track_video

    clip = two_people["clip"]
    track = track_video(clip, load_detector("insightface", SCRFD_ONNX, det_size=320, threads=1), det_size=320,
                        every=8)
    assert len(track) == 50 and all(len(f) == 2 for f in track.faces)
    track.speaking = [np.array([(3.0 if (i < 25) == (d[0] < SIZE[0] / 2) else 0.2) for d in f], np.float32)
                      for i, f in enumerate(track.faces)]
    path = tmp_path / "track.json"
    track.save(path)
    audio = make_audio(tmp_path / "new.wav", seconds=2.0)
    out = tmp_path / "out.mp4"
    result = dub(clip, audio, out, _dub_options(None, track=path, speakers=SpeakerSetup(auto=True)),
                 model=generator)
    assert result.frames == 50 and result.faces == 50
    src, got = read_frames(clip), read_frames(out)
    first = {w: region_changes(src[:25], got[:25], FACES[w])["mouth"] for w in FACES}
    second = {w: region_changes(src[25:], got[25:], FACES[w])["mouth"] for w in FACES}
    assert first["left"] > 4 * NOISE and first["right"] < NOISE, first
    assert second["right"] > 4 * NOISE and second["left"] < NOISE, second


def test_reference_frame_at_seconds(tmp_path):
    """VIDEO@SECONDS picks the frame at that time (the frame a user sees there), a still image its only frame."""
    from lipsync_cli.faces.identity import frame_at

    clip = make_video(tmp_path / "v.mp4", seconds=1.0, size=(64, 48), audio=False)
    frames = read_frames(clip)
    assert np.array_equal(frame_at(clip, seconds=0.5), frames[12])  # 0.5 s x 25 fps
    assert np.array_equal(frame_at(clip, index=3), frames[3])
    with pytest.raises(BadOption, match="no frame 50"):
        frame_at(clip, seconds=2.0)
    assert Reference.parse(f"{clip}@0.5") == Reference(video=clip, seconds=0.5)
    with pytest.raises(BadOption, match="seconds"):
        Reference.parse(f"{clip}@half")
