"""`lipsync eval lse` on files (crop and track mode, bad inputs in the batch) and `lipsync eval benchmark`
end to
end on the synthetic dataset with fake weights."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
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
