"""`lipsync prepare` then `lipsync eval benchmark`: the crops of a moving face differ in size within a clip, and
every clip is still scored; a run that scores nothing fails and says why."""

from __future__ import annotations

import json
import math
import os

import pytest
from typer.testing import CliRunner

from lipsync_cli.cli.app import app


@pytest.fixture
def lipsync(capsys, monkeypatch):
    """lipsync(*args) -> (exit code, stdout, stderr) of the console script's own entry point, in this process
    (torch is imported once, not per command)."""
    from lipsync_cli.cli import run

    monkeypatch.setenv("LIPSYNC_OFFLINE", "1")
    monkeypatch.delenv("LIPSYNC_DEBUG", raising=False)

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def _bench_args(data, test_list, fake_ckpt) -> list[str]:
    return ["eval", "benchmark", "--data", str(data), "--test-list", str(test_list), "--checkpoint",
            str(fake_ckpt("wav2lip")), "--syncnet", str(fake_ckpt("syncnet_v2")), "--reconstruction",
            "--device", "cpu"]


@pytest.mark.slow
def test_prepared_moving_faces_are_all_scored(tmp_path, scrfd_onnx, testmedia, fake_ckpt, lipsync, monkeypatch):
    """A real detector follows a face the camera zooms in on: the crops of a clip differ in size, and the benchmark
    (without -o: into ./benchmark, which it names) scores every clip, real and dubbed, with finite numbers."""
    import cv2

    from lipsync_cli.train.synthetic import make_synthetic_lrs2

    photo = cv2.imread(str(testmedia / "facerec_obama-720p.jpg"))
    root = tmp_path / "lrs2"
    make_synthetic_lrs2(root, 1, 2, seconds=0.6, frame_size=(256, 144), background=photo, motion=0.15)
    data = tmp_path / "data"
    code, _, err = lipsync("prepare", str(root), str(data), "--detector", "insightface", "--detector-weights",
                           str(scrfd_onnx), "--device", "cpu", "--det-size", "256", "-q")
    assert code == 0, err
    clips = (data / "filelists" / "train.txt").read_text().split()
    assert clips == ["spk00/00000", "spk00/00001"]
    for clip in clips:
        crops = sorted((data / clip).glob("*.jpg"))
        assert len(crops) == 15
        sizes = {cv2.imread(str(f)).shape[:2] for f in crops}
        assert len(sizes) > 3, sizes  # the box follows the face: what the benchmark used to refuse

    monkeypatch.chdir(tmp_path)
    code, stdout, err = lipsync(*_bench_args(data, data / "filelists" / "train.txt", fake_ckpt))
    assert code == 0, err
    out = tmp_path / "benchmark"
    doc = json.loads((out / "benchmark.json").read_text())
    real_row, gen_row = doc["summary"]["rows"]
    assert (real_row["count"], real_row["failed"], gen_row["count"], gen_row["failed"]) == (2, 0, 2, 0), doc
    for real, pair in zip(doc["real"], doc["pairs"], strict=True):
        assert real["status"] == pair["status"] == "ok", (real, pair)
        assert real["n_frames"] == pair["lse"]["n_frames"] == pair["n_frames"] == 15
        assert math.isfinite(real["lse_d"]) and math.isfinite(pair["lse"]["lse_d"]) and 0 < pair["psnr"] < 60
    assert any("resized to 96x96" in n for n in doc["notes"]), doc["notes"]
    assert "| 2 |" in stdout and "videos" in stdout
    assert f"wrote {os.path.join('benchmark', 'benchmark.json')}" in err, err
    assert "warning" not in err, err
    from lipsync_cli.media.probe import probe

    info = probe(out / "videos" / "spk00_00000__spk00_00000.mp4")
    assert (info.width, info.height) == (96, 96)  # the generator's input: one size per clip


def test_a_benchmark_that_scores_nothing_fails_naming_the_cause(tmp_path, fake_ckpt, lipsync):
    """No clip has its audio.wav: exit 1, not a table of dashes with exit 0; stderr names the clips and the cause,
    and benchmark.json (written whole) has every row."""
    from lipsync_cli.train.synthetic import make_synthetic_dataset

    data = tmp_path / "data"
    make_synthetic_dataset(data, n_speakers=1, clips_per_speaker=2, seconds=0.6, seed=2)
    for clip in ("spk00/00000", "spk00/00001"):
        (data / clip / "audio.wav").unlink()
    test_list = tmp_path / "test.txt"
    test_list.write_text("spk00/00000\nspk00/00001\n")
    out = tmp_path / "bench"
    code, _, err = lipsync(*_bench_args(data, test_list, fake_ckpt), "-o", str(out), "-q")
    assert code == 1, (code, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: no dubbed test video was scored (0 of 2); first cause: spk00/00000: "
                           f"unreadable: no audio.wav in {data / 'spk00' / '00000'}"), err
    assert str(out / "benchmark.json") in last
    assert f"spk00/00001: unreadable: no audio.wav in {data / 'spk00' / '00001'}" in err
    assert "Traceback" not in err
    doc = json.loads((out / "benchmark.json").read_text())
    assert [p["status"] for p in doc["pairs"]] == ["unreadable", "unreadable"]


def test_clips_not_scored_are_named_on_the_console(tmp_path, monkeypatch):
    """One clip of two failed: exit 0 (the other is scored), but stderr says which one and why, even under -q."""
    from lipsync_cli.evaluate import benchmark as B
    from lipsync_cli.evaluate.lse import LSEResult

    rows = [{"method": "Real videos", "lse_d": 7.0, "lse_c": 6.0, "count": 1, "failed": 1},
            {"method": "g.pth", "lse_d": 8.0, "lse_c": 5.0, "count": 1, "failed": 1}]
    ok = LSEResult(video="a/1", lse_d=7.0, lse_c=6.0)
    bad = LSEResult(video="a/2", status="too_short", error="4 frames: SyncNet needs at least 6")
    pairs = [B.PairResult(video="a/1", audio="a/1", lse=ok),
             B.PairResult(video="a/2", audio="a/2", status="too_short", error=bad.error)]
    fake = B.BenchmarkReport(real=[ok, bad], pairs=pairs,
                             summary={"protocol": "reconstruction (own audio)", "test_clips": 2, "rows": rows})
    monkeypatch.setattr(B, "run_benchmark", lambda *a, **k: fake)
    (tmp_path / "t.txt").write_text("a/1\na/2\n")
    out = tmp_path / "bench"
    res = CliRunner().invoke(
        app, ["eval", "benchmark", "--data", str(tmp_path), "--test-list", str(tmp_path / "t.txt"),
              "--checkpoint", str(tmp_path / "t.txt"), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "warning: not every test clip was scored (scored: Real videos 1 of 2, g.pth 1 of 2)" in res.stderr
    assert res.stderr.count("a/2: too_short: 4 frames: SyncNet needs at least 6") == 1  # real and dubbed: once
    assert "a/1" not in res.stderr and f"every row: {out / 'benchmark.json'}" in res.stderr
    assert res.stdout == ""  # -q: no table
