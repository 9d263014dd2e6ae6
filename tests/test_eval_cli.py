"""`lipsync eval lse` on files (crop and track mode, bad inputs in the batch) and `lipsync eval benchmark`
end to
end on the synthetic dataset with fake weights."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synth import make_video, run_ffmpeg
from typer.testing import CliRunner

from lipsync_cli.cli.app import app
from lipsync_cli.evaluate import lse as L

runner = CliRunner()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A synthetic talking face (1.2 s at 25 fps), the same at 30 fps, one without audio, one too short."""
    from lipsync_cli.train.synthetic import _clip_media, _style, write_mp4

    d = tmp_path_factory.mktemp("eval_clips")
    rng = np.random.default_rng(0)
    wav, frames = _clip_media(rng, 1.2, 25, 96, _style(rng))
    write_mp4(d / "talk.mp4", frames, 25, wav)
    write_mp4(d / "talk30.mp4", frames, 30, wav[: int(len(frames) / 30 * 16000)])
    write_mp4(d / "silent_film.mp4", frames, 25, None)
    write_mp4(d / "short.mp4", frames[:4], 25, wav[: 4 * 640])
    return d


@pytest.fixture(scope="module")
def syncnet(fake_ckpt):
    from lipsync_cli.models.syncnet_v2 import load_syncnet_v2

    return load_syncnet_v2(fake_ckpt("syncnet_v2"))


def test_crop_mode_matches_the_arrays_and_resamples(clips, syncnet):
    opts = L.LSEOptions(mode="crop")
    res = L.score_video(clips / "talk.mp4", syncnet, opts)
    assert res.ok and res.n_frames == 30 and res.n_windows == 25 and len(res.curve) == 31
    # the same numbers as scoring the decoded frames and PCM directly
    frames = L.to_syncnet_frames(L.read_frames(clips / "talk.mp4"))
    direct = L.score_clip(syncnet, frames, L.read_pcm16(clips / "talk.mp4"))
    assert res.lse_d == pytest.approx(direct.lse_d, rel=1e-6) and res.offset == direct.offset
    # 30 fps input is resampled to 25 fps: the same 30 frames played at 30 fps last 1.0 s -> 25 frames
    res30 = L.score_video(clips / "talk30.mp4", syncnet, opts)
    assert res30.ok and res30.n_frames == 25


def test_read_pcm16_is_16k_mono_int16(clips):
    pcm = L.read_pcm16(clips / "talk.mp4")
    assert pcm.dtype == np.int16 and abs(len(pcm) - 1.2 * 16000) <= 1024 and np.abs(pcm).max() > 1000


def test_bad_inputs_get_a_status_and_the_rest_is_scored(clips, syncnet, tmp_path):
    paths = [clips / "silent_film.mp4", clips / "talk.mp4", clips / "short.mp4", tmp_path / "missing.mp4"]
    res = L.score_videos(paths, L.LSEOptions(mode="crop"), model=syncnet)
    assert [r.status for r in res] == ["no_audio", "ok", "too_short", "unreadable"]
    assert "no audio stream" in res[0].error and "at least 6 frames" in res[2].error
    s = L.summarize(res)
    assert (s["videos"], s["scored"], s["failed"]) == (4, 1, 3)
    assert s["lse_d"] == pytest.approx(res[1].lse_d)


def test_syncnet_crop_follows_run_pipeline_geometry():
    """The crop of a face box: centre, bs above, bs(1+2cs) below, bs(1+cs) either side, grey-padded."""
    import cv2

    frame = np.random.default_rng(1).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    mx, my, bs, cs = 40.0, 150.0, 30.0, 0.4  # near the left/bottom edges: padding is used
    bsi = int(bs * (1 + 2 * cs))
    padded = np.full((200 + 2 * bsi, 300 + 2 * bsi, 3), 110, np.uint8)
    padded[bsi : bsi + 200, bsi : bsi + 300] = frame
    want = cv2.resize(
        padded[
            int(my + bsi - bs) : int(my + bsi + bs * 1.8), int(mx + bsi - bs * 1.4) : int(mx + bsi + bs * 1.4)
        ],
        (224, 224),
    )
    np.testing.assert_array_equal(L.syncnet_crop(frame, (mx, my, bs), cs), want)


def test_face_tracks_split_at_a_shot_change_and_bridge_gaps():
    a = np.array([[10, 10, 50, 50, 0.9]])
    b = np.array([[200, 10, 260, 70, 0.9]])
    none = np.zeros((0, 5))
    faces = [a, a + 1, none, a + 2, b, b + 1, b + 2, b + 3, b + 4, np.concatenate([b + 5, a])]
    tracks = L.face_tracks(faces, max_gap=25)
    assert [t[0].tolist() for t in tracks] == [[0, 1, 3, 9], [4, 5, 6, 7, 8, 9]]  # longest span first
    # a gap longer than max_gap ends the track
    tracks = L.face_tracks(faces, max_gap=2)
    assert [t[0].tolist() for t in tracks] == [[4, 5, 6, 7, 8, 9], [0, 1, 3], [9]]
    assert L.face_tracks([none, none]) == []


def test_face_segment_interpolates_gaps():
    raw = [None, np.array([0, 0, 10, 10.0]), None, None, np.array([30, 0, 40, 10.0]), None]
    first, stop, boxes = L.face_segment(raw)
    assert (first, stop) == (1, 5)
    np.testing.assert_allclose(boxes[:, 0], [0, 10, 20, 30])
    with pytest.raises(Exception, match="no face"):
        L.face_segment([None, None])


def test_track_mode_on_a_real_face_and_no_face(testmedia, scrfd_onnx, syncnet, tmp_path):
    from lipsync_cli.faces import load_detector

    clip = tmp_path / "hamilton.mp4"
    run_ffmpeg(
        [
            "-ss",
            "1.0",
            "-i",
            str(testmedia / "facerec_short_hamilton_clip.mp4"),
            "-t",
            "1.4",
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
            str(clip),
        ]
    )
    nofaces = make_video(tmp_path / "pattern.mp4", seconds=1.0, size=(160, 120))
    det = load_detector("insightface", weights=scrfd_onnx, det_size=320)
    opts = L.LSEOptions(mode="track", detector="insightface", detector_weights=scrfd_onnx, det_size=320)
    res = L.score_videos([clip, nofaces], opts, model=syncnet, detector=det)
    assert res[0].ok, res[0].error
    # 1.4 s at 25 fps = 35 frames; a shot change at frame 13: the longest face track is the second shot
    assert res[0].first_frame >= 10 and res[0].n_frames >= 20
    assert res[0].first_frame + res[0].n_frames <= 35 and res[0].n_windows == res[0].n_frames - 5
    assert res[1].status == "no_face" and "no face" in res[1].error


def test_cli_lse_writes_table_json_csv_and_plots(clips, fake_ckpt, tmp_path):
    out = tmp_path / "res"
    r = runner.invoke(
        app,
        [
            "eval",
            "lse",
            str(clips / "talk.mp4"),
            str(clips / "silent_film.mp4"),
            "--mode",
            "crop",
            "--syncnet",
            str(fake_ckpt("syncnet_v2")),
            "--json",
            str(out / "r.json"),
            "--csv",
            str(out / "r.csv"),
            "--plot",
            str(out / "png"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "talk.mp4" in r.output and "no_audio" in r.output and "mean over 1 of 2" in r.output
    doc = json.loads((out / "r.json").read_text())
    assert doc["summary"]["scored"] == 1 and len(doc["videos"][0]["curve"]) == 31
    assert doc["videos"][1]["status"] == "no_audio"
    rows = list(csv.DictReader((out / "r.csv").open()))
    assert [row["status"] for row in rows] == ["ok", "no_audio"]
    assert float(rows[0]["lse_d"]) == pytest.approx(doc["videos"][0]["lse_d"])
    pngs = sorted(p.name for p in (out / "png").iterdir())
    assert pngs == ["lse_c_hist.png", "talk_offsets.png"]
    assert all((out / "png" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_cli_lse_fails_when_no_video_could_be_scored(clips, fake_ckpt, tmp_path):
    # a script must not read "exit 0" as scores: every video failing is an error, after the reports are written
    out = tmp_path / "r.json"
    r = runner.invoke(app, ["eval", "lse", str(clips / "silent_film.mp4"), "--mode", "crop", "--syncnet",
                            str(fake_ckpt("syncnet_v2")), "--json", str(out), "--quiet"])
    assert r.exit_code == 1, r.output
    assert "none of the 1 video(s) could be scored" in r.output
    assert json.loads(out.read_text())["videos"][0]["status"] == "no_audio"


def test_cli_rejects_bad_mode(clips, fake_ckpt):
    from lipsync_cli.cli import main

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "eval",
                "lse",
                str(clips / "talk.mp4"),
                "--mode",
                "bogus",
                "--syncnet",
                str(fake_ckpt("syncnet_v2")),
            ]
        )
    assert exc.value.code == 2


# ------------------------------------------------------------------------------------------------------------
# benchmark


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The training issue's synthetic preprocessed dataset: 3 test clips of 0.6 s (15 frames) each."""
    from lipsync_cli.train.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("bench")
    lists = make_synthetic_dataset(root / "data", n_speakers=2, clips_per_speaker=2, seconds=0.6, seed=3)
    assert lists["test"].is_file()
    test_list = root / "test.txt"  # three clips, so that random pairs have a choice
    test_list.write_text("spk00/00000\nspk00/00001\nspk01/00000\n")
    return root / "data", test_list


@pytest.mark.slow
@pytest.mark.parametrize("reconstruction", [False, True])
def test_benchmark_end_to_end(dataset, tmp_path, fake_ckpt, reconstruction):
    data, test_list = dataset
    n = 2 if reconstruction else 3
    out = tmp_path / "bench"
    args = [
        "eval",
        "benchmark",
        "--data",
        str(data),
        "--test-list",
        str(test_list),
        "--checkpoint",
        str(fake_ckpt("wav2lip")),
        "--syncnet",
        str(fake_ckpt("syncnet_v2")),
        "--out",
        str(out),
        "--seed",
        "1",
        "--plot",
        str(out / "png"),
        "--limit",
        str(n),
    ]
    if reconstruction:
        args.append("--reconstruction")
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "benchmark.json").read_text())
    assert all(p["status"] == "ok" for p in doc["pairs"]), doc["pairs"]
    real_row, gen_row = doc["summary"]["rows"]
    assert real_row["method"] == "Real videos" and real_row["count"] == n
    assert gen_row["method"] == "wav2lip.pth" and gen_row["count"] == n
    assert len(list((out / "videos").glob("*.mp4"))) == n
    for p in doc["pairs"]:
        assert (p["audio"] == p["video"]) == reconstruction
        assert p["lse"]["n_frames"] == 15  # 0.6 s of the pair's audio at 25 fps
        assert p["lse"]["lse_d"] > 0 and len(p["lse"]["curve"]) == 31
    md = (out / "benchmark.md").read_text()
    assert "| Real videos |" in md and "LSE-D" in md and "LSE-C" in md and "| wav2lip.pth |" in md
    if reconstruction:
        assert "PSNR" in md and math_finite(gen_row["psnr"]) and 0 < gen_row["psnr"] < 60
        assert -1 <= gen_row["ssim"] <= 1
    else:
        assert "PSNR" not in md and gen_row["psnr"] is None
    assert (out / "png" / "lse_c_hist.png").is_file() and (out / "png" / "real_lse_c_hist.png").is_file()


def math_finite(x) -> bool:
    import math

    return x is not None and math.isfinite(x)


def test_random_pairs_respect_audio_length():
    from lipsync_cli.evaluate.benchmark import random_pairs

    durations = {"a": (2.0, 2.0), "b": (1.0, 1.0), "c": (3.0, 3.0), "d": (0.5, 0.5)}
    clips = list(durations)
    pairs = random_pairs(durations, clips, seed=0)
    assert pairs == random_pairs(durations, clips, seed=0)  # seeded
    for v, a in pairs:
        if v == "d":
            assert a is None  # no other clip's audio fits in 0.5 s
        else:
            assert a != v and durations[a][1] <= durations[v][0] + 0.04


def test_read_pairs_format(tmp_path):
    from lipsync_cli.errors import BadOption
    from lipsync_cli.evaluate.benchmark import read_pairs

    f = tmp_path / "pairs.txt"
    f.write_text("spk01/00000 spk00/00001\n\n# comment\nspk00/00001 spk01/00000\n")
    assert read_pairs(f) == [("spk00/00001", "spk01/00000"), ("spk01/00000", "spk00/00001")]
    f.write_text("only_one_column\n")
    with pytest.raises(BadOption):
        read_pairs(f)


def test_image_metrics_known_values():
    from lipsync_cli.evaluate import metrics

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert metrics.psnr(a, a) == float("inf") and metrics.ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert metrics.psnr(a, b) == pytest.approx(10 * np.log10(255**2 / mse))
    assert metrics.ssim(a, 255 - a) < 0
    # Frechet distance of identical Gaussians is 0, and of shifted means |d|^2
    mu, cov = np.zeros(3), np.eye(3)
    assert metrics.frechet_distance(mu, cov, mu, cov) == pytest.approx(0, abs=1e-9)
    assert metrics.frechet_distance(mu, cov, mu + 2, cov) == pytest.approx(12)


def test_plots_are_written(tmp_path):
    from lipsync_cli.evaluate.plots import write_plots

    res = [
        L.LSEResult(video="/x/a b.mp4", lse_d=7.1, lse_c=2.0, offset=-2, curve=list(np.linspace(9, 8, 31))),
        L.LSEResult(video="/x/c.mp4", status="no_face"),
    ]
    written = write_plots(res, tmp_path)
    assert [p.name for p in written] == ["a_b_offsets.png", "lse_c_hist.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert Path(written[0]).read_bytes()[:4] == b"\x89PNG"


def test_missing_syncnet_offline_names_the_download(clips, tmp_path, monkeypatch):
    from lipsync_cli.cli import main

    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("LIPSYNC_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["eval", "lse", str(clips / "talk.mp4"), "--mode", "crop"])
    assert exc.value.code == 5  # WeightsNotFound


@pytest.mark.parametrize("audio_delay", [0.0, 0.2])
def test_read_pcm16_equals_the_reference_extraction(clips, tmp_path, audio_delay):
    """The reference runs `ffmpeg -i V -async 1 -ac 1 -vn -acodec pcm_s16le -ar 16000 audio.wav` and reads it
    with scipy's wavfile (int16). For a file whose audio starts after its video, ours is padded at the start
    with silence up to the video's first frame (aresample first_pts=0, what `-async 1` stood for); this
    ffmpeg's
    `-async 1` no longer pads, which would shift the audio against the frames."""
    import soundfile as sf

    src = clips / "talk.mp4"
    if audio_delay:
        src = tmp_path / "late.mp4"
        run_ffmpeg(
            [
                "-i",
                str(clips / "talk.mp4"),
                "-itsoffset",
                str(audio_delay),
                "-i",
                str(clips / "talk.mp4"),
                "-map",
                "0:v",
                "-map",
                "1:a",
                "-c",
                "copy",
                str(src),
            ]
        )
    wav = tmp_path / "audio.wav"
    try:
        run_ffmpeg(
            [
                "-i",
                str(src),
                "-async",
                "1",
                "-ac",
                "1",
                "-vn",
                "-acodec",
                "pcm_s16le",
                "-ar",
                "16000",
                str(wav),
            ]
        )
    except RuntimeError:
        pytest.skip("this ffmpeg no longer accepts -async")
    want, sr = sf.read(str(wav), dtype="int16")
    got = L.read_pcm16(src)
    assert sr == 16000 and got.dtype == np.int16
    pad = len(got) - len(want)
    if audio_delay:
        # the audio stream starts ~0.14 s in (0.2 s offset minus the AAC priming): that much silence first
        assert 0.1 * 16000 <= pad <= 0.25 * 16000 and not got[:pad].any()
    else:
        assert pad == 0
    np.testing.assert_array_equal(got[pad:], want)


# --- benchmark: alignment at gaps, the generator's lead, one bad clip in a batch


class _PasteReference(torch.nn.Module):
    """A stand-in generator: returns the reference face (channels 3-5) and records the mel windows it is fed."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.mels: list[np.ndarray] = []
        mels = self.mels
        self.record = lambda m: mels.append(m)  # a function: dub's deep copy of the model records here too

    def forward(self, mel, face):
        self.record(mel.detach().float().cpu().numpy())  # (B, 1, 80, 16)
        return face[:, 3:6] + 0 * self.w


class _CheapSyncNet(torch.nn.Module):
    """Stands in for SyncNet v2 where only the bookkeeping is tested: pooled pixels and MFCCs as embeddings."""

    def forward_lip(self, vid):  # (n, 3, 5, 224, 224) -> (n, 1024)
        return vid.float().mean((1, 3, 4)).repeat(1, 205)[:, :1024] / 255

    def forward_aud(self, win):  # (n, 1, 13, 20) -> (n, 1024)
        return win.float().mean((1, 3)).repeat(1, 79)[:, :1024] / 100


@pytest.fixture(scope="module")
def one_clip(tmp_path_factory):
    """One synthetic prepared clip of 0.6 s (frames 0..14 and audio.wav): its folder."""
    from lipsync_cli.train.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("bench1")
    make_synthetic_dataset(root / "data", n_speakers=1, clips_per_speaker=1, seconds=0.6, seed=5)
    return root / "data" / "spk00" / "00000"


def _copy_clip(src: Path, dst: Path, keep, offset: int = 0) -> None:
    """Frames ``keep`` of ``src`` as frames ``i - offset`` of ``dst``; the audio from frame ``offset`` on."""
    import shutil

    import soundfile as sf

    dst.mkdir(parents=True)
    for i in keep:
        shutil.copy(src / f"{i}.jpg", dst / f"{i - offset}.jpg")
    wav, sr = sf.read(str(src / "audio.wav"), dtype="int16")
    sf.write(str(dst / "audio.wav"), wav[offset * sr // 25:], sr, subtype="PCM_16")


def _bench(data, clips, out, syncnet, generator=None, **opts):
    from lipsync_cli.evaluate.benchmark import BenchmarkOptions, run_benchmark

    test_list = out / "test.txt"
    out.mkdir(parents=True, exist_ok=True)
    test_list.write_text("".join(f"{c}\n" for c in clips))
    options = BenchmarkOptions(device="cpu", reconstruction=True, **opts)
    return run_benchmark(data, test_list, out, options, generator=generator, syncnet_model=syncnet)


def test_benchmark_scores_a_clip_with_a_missing_frame_aligned(one_clip, syncnet, tmp_path):
    """Frame 3 has no face (prepare left it out): the clip is scored over frames 4-14 with the audio from 0.16 s,
    exactly as a clip that holds only those frames and that audio; not frames 0-2 + 4-14 glued to the audio."""
    data = tmp_path / "data"
    _copy_clip(one_clip, data / "gap" / "c", [i for i in range(15) if i != 3])
    _copy_clip(one_clip, data / "cut" / "c", range(4, 15), offset=4)
    report = _bench(data, ["gap/c", "cut/c"], tmp_path / "out", syncnet, generator=_PasteReference())
    gap, cut = report.real
    assert gap.status == cut.status == "ok", (gap, cut)
    assert gap.n_frames == cut.n_frames == 11 and gap.first_frame == 4
    assert (gap.lse_d, gap.lse_c, gap.offset, gap.curve) == (cut.lse_d, cut.lse_c, cut.offset, cut.curve)
    pg, pc = report.pairs
    assert pg.status == pc.status == "ok", (pg, pc)
    assert pg.lse.n_frames == pc.lse.n_frames == 11 and pg.first_frame == 4
    assert pg.lse.offset == pc.lse.offset
    assert pg.lse.lse_d == pytest.approx(pc.lse.lse_d, abs=1e-5)
    assert pg.psnr == pytest.approx(pc.psnr, abs=1e-6)
    assert any("gap/c" in n and "0-2, 4-14" in n and "4-14" in n.split("scored")[1] for n in report.notes)


@pytest.mark.parametrize("stored_lead", [None, 2])
def test_benchmark_dubs_with_the_lead_of_the_checkpoint(one_clip, fake_ckpt, tmp_path, monkeypatch,
                                                         stored_lead):
    """A checkpoint that stores mel_lead 2 gives frame f the mel window of frame f - 2 in the benchmark's dubs;
    a generator passed in without mel_lead gets lead 0."""
    from lipsync_cli.audio import load_audio, melspectrogram
    from lipsync_cli.checkpoint import atomic_save, load_generator, make_checkpoint
    from lipsync_cli.models.wav2lip import Wav2Lip

    data = tmp_path / "data"
    _copy_clip(one_clip, data / "a" / "c", range(15))
    stub = _PasteReference()
    if stored_lead is None:
        kw, lead = {"generator": stub}, 0
    else:
        ckpt = tmp_path / "g.pth"
        atomic_save(make_checkpoint(load_generator(fake_ckpt("wav2lip")), mel_lead=stored_lead), ckpt)
        monkeypatch.setattr(Wav2Lip, "forward", lambda self, mel, face: stub(mel, face))
        kw, lead = {"checkpoint": ckpt}, stored_lead
    report = _bench(data, ["a/c"], tmp_path / "out", _CheapSyncNet(), **kw)
    assert report.pairs[0].status == "ok", report.pairs
    wav = load_audio(data / "a" / "c" / "audio.wav")
    mel = melspectrogram(wav)
    fed = np.concatenate(stub.mels)[:, 0]  # (frames, 80, 16)
    assert len(fed) == 15  # 0.6 s at 25 fps

    def window(f, lead):  # frame f -> the window of frame f - lead (80 mel steps/s), clamped to the audio
        s = min(max(0, int((f - lead) * 80 / 25)), mel.shape[1] - 16)
        return mel[:, s:s + 16]

    np.testing.assert_array_equal(fed, np.stack([window(f, lead) for f in range(15)]))
    if lead:
        assert not np.array_equal(fed, np.stack([window(f, 0) for f in range(15)]))  # the lead matters here


def test_benchmark_one_broken_clip_never_stops_the_batch(one_clip, tmp_path, monkeypatch):
    """A corrupt jpg and an unexpected ValueError inside each become a row with a status and a one-line error;
    the good clip is still scored."""
    from lipsync_cli.evaluate import benchmark as B

    data = tmp_path / "data"
    for name in ("good", "jpg", "boom"):
        _copy_clip(one_clip, data / name / "c", range(15))
    (data / "jpg" / "c" / "5.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    real_read = B.read_pcm16

    def read_pcm16(path):
        if "boom" in str(path):
            raise ValueError("operands could not be broadcast\ntogether with shapes (3,) (4,)")
        return real_read(path)

    monkeypatch.setattr(B, "read_pcm16", read_pcm16)
    report = _bench(data, ["good/c", "jpg/c", "boom/c"], tmp_path / "out", _CheapSyncNet(),
                    generator=_PasteReference())
    good, jpg, boom = report.real
    assert good.status == "ok" and good.lse_d > 0 and good.n_frames == 15
    assert jpg.status == "unreadable" and "5.jpg" in jpg.error
    assert boom.status == "error" and boom.error == "ValueError: together with shapes (3,) (4,)"
    pgood, pjpg, pboom = report.pairs
    assert pgood.status == "ok" and pgood.lse.lse_d > 0 and pgood.psnr > 0
    assert pjpg.status == "unreadable" and "5.jpg" in pjpg.error and pjpg.lse is None
    assert pboom.status == "error" and "ValueError" in pboom.error and "\n" not in pboom.error
    real_row, gen_row = report.summary["rows"]
    assert real_row["count"] == 1 and real_row["failed"] == 2
    assert gen_row["count"] == 1 and gen_row["failed"] == 2


class _TinyInception(torch.nn.Module):
    """Stands in for torchvision's Inception-v3 (27 M parameters): a conv, a BatchNorm, a pool and ``fc``."""

    def __init__(self, **kw):
        super().__init__()
        self.Conv2d_1a_3x3 = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.bn(self.Conv2d_1a_3x3(x)).mean((2, 3)))


def test_inception_weights_load_strictly(tmp_path, fake_ckpt, monkeypatch):
    """The whole file loads (with or without BatchNorm's counters); one that lacks a tensor, has one too many,
    one of the wrong shape, or another network's file, is refused in one line (a partly random Inception would
    give an FID that looks real)."""
    import torchvision.models

    from lipsync_cli.errors import CheckpointMismatch
    from lipsync_cli.evaluate.metrics import InceptionFeatures

    monkeypatch.setattr(torchvision.models, "inception_v3", _TinyInception)
    sd = _TinyInception().state_dict()
    cases = {
        "full": (sd, None),
        "old": ({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, None),
        "short": ({k: v for k, v in sd.items() if k != "bn.running_var"},
                  "1 missing tensors (e.g. bn.running_var), 0 unexpected"),
        "long": ({**sd, "AuxLogits.fc.weight": torch.zeros(1)}, "0 missing tensors, 1 unexpected (e.g. AuxLogits"),
        "shape": ({**sd, "fc.weight": torch.zeros(10, 5)}, "fc.weight"),
    }
    for name, (weights, error) in cases.items():
        torch.save(weights, tmp_path / f"{name}.pth")
        if error is None:
            feats = InceptionFeatures(tmp_path / f"{name}.pth")
            assert feats([np.zeros((48, 96, 3), np.uint8)] * 2).shape == (2, 4), name  # fc dropped: pool features
            continue
        with pytest.raises(CheckpointMismatch) as exc:
            InceptionFeatures(tmp_path / f"{name}.pth")
        assert "does not fit torchvision's Inception-v3" in str(exc.value) and error in str(exc.value), name
        assert "\n" not in str(exc.value), name
    with pytest.raises(CheckpointMismatch, match="Inception-v3: 8 missing tensors .* unexpected") as exc:
        InceptionFeatures(fake_ckpt("syncnet_v2"))
    assert "\n" not in str(exc.value)


def test_benchmark_report_that_cannot_be_written_is_a_write_error(tmp_path, monkeypatch):
    """Disk full while the benchmark writes its table: a one-line WriteError (exit 3) naming benchmark.md, and
    no benchmark.md, whole or partial, nor a temporary file, is left."""
    import errno

    from lipsync_cli.errors import WriteError
    from lipsync_cli.evaluate import benchmark as B

    rows = [{"method": "Real videos", "lse_d": 7.0, "lse_c": 6.0, "count": 1, "failed": 0},
            {"method": "g.pth", "lse_d": 8.0, "lse_c": 5.0, "count": 1, "failed": 0}]
    fake = B.BenchmarkReport(real=[], pairs=[], summary={"protocol": "pairs file", "test_clips": 1, "rows": rows})
    monkeypatch.setattr(B, "run_benchmark", lambda *a, **k: fake)
    real_write_text = Path.write_text

    def write_text(self, data, *a, **k):
        if "benchmark.md" in self.name:  # the disk fills up just then
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, data, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)
    out = tmp_path / "bench"
    out.mkdir()
    (tmp_path / "t.txt").write_text("a/b\n")
    res = runner.invoke(app, ["eval", "benchmark", "--data", str(tmp_path), "--test-list", str(tmp_path / "t.txt"),
                              "--checkpoint", str(tmp_path / "t.txt"), "--out", str(out), "-q"])
    assert isinstance(res.exception, WriteError), res.output
    assert res.exception.exit_code == 3 and "\n" not in str(res.exception)
    assert str(res.exception).startswith(f"could not write {out / 'benchmark.md'}: No space left on device")
    assert sorted(p.name for p in out.iterdir()) == ["benchmark.json"]  # written before; nothing of the table


@pytest.mark.parametrize("n", [1, 5, 12, 13, 40])
def test_crop_params_median_equals_scipy_without_its_warning(n):
    import warnings

    from scipy.signal import medfilt

    rng = np.random.default_rng(n)
    boxes = np.cumsum(rng.normal(0, 3, (n, 4)), axis=0) + [100, 100, 200, 220]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns "kernel_size exceeds volume extent" for n < 13
        got = L.crop_params(boxes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = boxes
        want = [medfilt(v, L.MEDFILT_KERNEL) for v in ((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                                                         np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2)]
    np.testing.assert_array_equal(got, np.stack(want, axis=1))
