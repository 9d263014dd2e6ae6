"""`lipsync prepare` on a tiny LRS2-shaped folder of synthetic mp4s: layout, resume, failures, the real
detector."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lipsync_cli.constants import SAMPLE_RATE
from lipsync_cli.train.prepare import FAILURES_FILE, PrepareOptions, find_clips, prepare
from lipsync_cli.train.synthetic import make_synthetic_lrs2

# make_synthetic_lrs2 puts the 96 px face in the middle of a 160x128 frame
FACE_BOX = (32, 16, 128, 112)


@pytest.fixture(scope="module")
def lrs2(tmp_path_factory):
    root = tmp_path_factory.mktemp("lrs2")
    make_synthetic_lrs2(root, n_speakers=2, clips_per_speaker=2, seconds=1.0, pretrain_clips=1, seed=1)
    return root


def _opts(**kw):
    return PrepareOptions(box=FACE_BOX, pads=(0, 0, 0, 0), smooth_window=1, **kw)


def test_find_clips(lrs2):
    jobs = find_clips(lrs2, pretrain=True)
    assert [(j.name, j.split) for j in jobs] == [
        ("spk00/00000", "train"),
        ("spk01/00000", "train"),
        ("spk00/00001", "val"),
        ("spk01/00001", "test"),
        ("pretrain/spk00/00000", "pretrain"),
    ]


def test_prepare_layout_and_resume(lrs2, tmp_path):
    import cv2
    import soundfile as sf

    out = tmp_path / "out"
    seen = []
    report = prepare(lrs2, out, _opts(pretrain=True), progress=lambda *a: seen.append(a))
    assert sorted(report.prepared) == sorted(j.name for j in find_clips(lrs2, pretrain=True))
    assert not report.failed and report.frames == 5 * 25
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5] and all(s[1] == 5 for s in seen)
    for name in report.prepared:
        d = out / name
        assert sorted(int(p.stem) for p in d.glob("*.jpg")) == list(range(25))
        img = cv2.imread(str(d / "7.jpg"))
        assert img.shape == (96, 96, 3)
        wav, sr = sf.read(d / "audio.wav")
        assert sr == SAMPLE_RATE and wav.ndim == 1 and abs(len(wav) / sr - 1.0) < 0.05
    # main and pretrain clips of the same name do not collide
    assert (out / "spk00/00000").is_dir() and (out / "pretrain/spk00/00000").is_dir()
    assert (out / "filelists/train.txt").read_text() == "spk00/00000\nspk01/00000\n"
    assert (out / "filelists/val.txt").read_text() == "spk00/00001\n"
    assert (out / "filelists/pretrain.txt").read_text() == "pretrain/spk00/00000\n"
    # the crop is the face: the drawn mouth is dark, the skin bright
    crop = cv2.imread(str(out / "spk00/00000/3.jpg")).astype(float)
    assert crop[40:60, 40:56].mean() > 100  # skin around the nose

    # resumable: a rerun skips everything; a deleted clip is redone, alone
    again = prepare(lrs2, out, _opts(pretrain=True))
    assert again.prepared == [] and len(again.skipped) == 5
    shutil.rmtree(out / "spk01/00001")
    (out / "spk00" / ".00009.tmp-deadbeef").mkdir()  # debris of a killed run is cleaned
    third = prepare(lrs2, out, _opts(pretrain=True))
    assert third.prepared == ["spk01/00001"] and len(third.skipped) == 4
    assert not (out / "spk00" / ".00009.tmp-deadbeef").exists()


def test_failures_are_reported_not_fatal(lrs2, tmp_path):
    root = tmp_path / "lrs2"
    shutil.copytree(lrs2, root)
    (root / "main/spk01/00001.mp4").write_bytes(b"not a video")
    (root / "main/spk00/00001.mp4").unlink()
    out = tmp_path / "out"
    report = prepare(root, out, _opts())
    assert sorted(report.prepared) == ["spk00/00000", "spk01/00000"]
    failed = dict(report.failed)
    assert set(failed) == {"spk01/00001", "spk00/00001"}
    assert "not found" in failed["spk00/00001"] or "missing" in failed["spk00/00001"]
    lines = (out / FAILURES_FILE).read_text().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["spk00/00001", "spk01/00001"]
    assert not (out / "spk01/00001").exists()
    assert (out / "filelists/test.txt").exists() is False  # its only clip failed


def test_no_face_fails_the_clip(lrs2, tmp_path):
    class NoFace:
        def detect(self, frames):
            return [np.zeros((0, 5), np.float32) for _ in frames]

    report = prepare(lrs2, tmp_path / "out", PrepareOptions(), detector=NoFace(), limit=1)
    assert report.prepared == [] and "face in only 0 of 25 frames" in report.failed[0][1]


def test_parallel_workers(lrs2, tmp_path):
    report = prepare(lrs2, tmp_path / "out", _opts(workers=2))
    assert sorted(report.prepared) == ["spk00/00000", "spk00/00001", "spk01/00000", "spk01/00001"]


def test_real_detector_on_a_photo(tmp_path, scrfd_onnx, testmedia):
    """SCRFD finds the face of a real photo (it does not see the drawn cartoon faces, hence --box above)."""
    import cv2

    photo = cv2.imread(str(testmedia / "facerec_obama-720p.jpg"))
    root = tmp_path / "lrs2"
    make_synthetic_lrs2(root, 1, 1, seconds=0.6, frame_size=(320, 240), background=photo)
    out = tmp_path / "out"
    opts = PrepareOptions(detector="insightface", detector_weights=str(scrfd_onnx), device="cpu", det_size=320)
    report = prepare(root, out, opts)
    assert report.prepared == ["spk00/00000"], report.failed
    crops = sorted((out / "spk00/00000").glob("*.jpg"))
    assert len(crops) == 15
    h, w = cv2.imread(str(crops[0])).shape[:2]
    assert 40 < h < 240 and 30 < w < 320


def test_cli_prepare(lrs2, tmp_path):
    from typer.testing import CliRunner

    from lipsync_cli.cli.app import app

    out = tmp_path / "out"
    args = ["prepare", str(lrs2), str(out), "--box", *map(str, FACE_BOX), "--limit", "2", "-q"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "filelists").iterdir()) == ["train.txt"]
    assert (out / "spk01/00000/24.jpg").is_file()


def test_a_full_disk_stops_prepare_with_a_write_error_and_no_half_clip(lrs2, tmp_path, monkeypatch):
    """The disk fills up at the 4th face crop: prepare stops with a one-line WriteError (exit 3) naming the crop
    (a full disk is no fault of the clip, so no clip is marked failed and none after it is tried), and neither
    the clip's folder nor its temporary folder is left. cv2.imwrite only returns False then, Python raises ENOSPC:
    both are simulated."""
    import errno
    from pathlib import Path

    import cv2
    from typer.testing import CliRunner

    from lipsync_cli.cli.app import app
    from lipsync_cli.errors import WriteError

    crops = []
    real_write_bytes = Path.write_bytes

    def write_bytes(self, data):
        if self.suffix == ".jpg":
            crops.append(self.name)
            if len(crops) > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(cv2, "imwrite", lambda path, img, params=None: len(crops.append(path) or crops) <= 3)
    out = tmp_path / "out"
    with pytest.raises(WriteError) as exc:
        prepare(lrs2, out, _opts(), limit=2)
    first = find_clips(lrs2)[0].name
    assert str(exc.value).startswith(f"could not write {out / first / '3.jpg'}: No space left on device")
    assert "\n" not in str(exc.value) and exc.value.exit_code == 3
    assert len(crops) == 4  # stopped at once: the second clip was never started
    assert not [p for p in out.rglob("*") if p.is_file() or ".tmp-" in p.name], list(out.rglob("*"))

    crops.clear()
    res = CliRunner().invoke(app, ["prepare", str(lrs2), str(tmp_path / "cli"), "--box", *map(str, FACE_BOX),
                                   "--limit", "2", "-q"])
    assert isinstance(res.exception, WriteError) and "No space left on device" in str(res.exception)
    assert not (tmp_path / "cli" / first).exists()
