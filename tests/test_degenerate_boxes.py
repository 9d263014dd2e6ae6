"""A detector's degenerate output (fake-weight S3FD gives boxes of 1e27 px, NaN, zero area) is a missing face or a
box clipped to the frame, made so at one place (ScaledDetector): no command ends in an internal error because of it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from checks import run_cli
from conftest import media
from synth import run_ffmpeg

from lipsync_cli.faces import ScaledDetector


class _Wild:
    name = "wild"

    def detect(self, frames):
        rows = [[-1e27, 5, 1e27, 1e27, 0.9],  # huge: clipped to the frame
                [np.nan, 1, 2, 3, 0.8],  # not finite: dropped
                [10, 10, 10, 20, 0.7],  # zero width: dropped
                [500, 500, 900, 900, 0.6],  # entirely outside: dropped
                [20, 20, 60, 70, 0.5]]  # a normal box, kept as it is
        return [np.array(rows, np.float32) for _ in frames]


def test_scaled_detector_clips_and_drops_unusable_boxes():
    det = ScaledDetector(_Wild(), det_size=640)
    out = det.detect([np.zeros((120, 160, 3), np.uint8)])[0]
    assert out.dtype == np.float32 and out.shape == (2, 5)
    np.testing.assert_allclose(out[0], [0, 5, 160, 120, 0.9], rtol=1e-6)
    np.testing.assert_allclose(out[1], [20, 20, 60, 70, 0.5])
    from lipsync_cli.faces.detect import usable_boxes

    assert usable_boxes(np.zeros((0, 5)), 10, 10).shape == (0, 5)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("degenerate") / "clip.mp4"
    run_ffmpeg(["-i", str(media("liveportrait_d12.mp4")), "-t", "0.6", "-c:v", "libx264", "-c:a", "aac", str(out)])
    return out


def test_fake_s3fd_track_stays_inside_the_frame(clip, fake_ckpt, tmp_path):
    track = tmp_path / "track.json"
    r = run_cli("detect", str(clip), "-o", str(track), "--detector-weights", str(fake_ckpt("s3fd")))
    assert r.returncode == 0, r.stderr
    assert track.stat().st_size < 100_000  # was 866 KB for 90 frames of unclipped 1e27 boxes
    numbers = [float(x) for x in json.dumps(json.loads(track.read_text())).replace("[", " ").replace("]", " ")
               .replace(",", " ").split() if _is_number(x)]
    assert max(abs(v) for v in numbers) <= 4096  # no 1e27 anywhere in the file


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def test_eval_lse_with_fake_s3fd_gives_every_video_a_row(clip, fake_ckpt, tmp_path):
    out = tmp_path / "lse.json"
    r = run_cli("eval", "lse", str(clip), str(clip), "--mode", "track", "--syncnet", str(fake_ckpt("syncnet_v2")),
                "--detector-weights", str(fake_ckpt("s3fd")), "--json", str(out))
    assert r.returncode != 70, r.stderr
    assert "internal error" not in r.stderr
    doc = json.loads(out.read_text())
    assert len(doc["videos"]) == 2
    assert all(v["status"] in ("ok", "no_face", "too_short") for v in doc["videos"]), doc["videos"]


def test_ref_face_video_at_time_with_fake_s3fd(clip, fake_ckpt, scrfd_onnx, tmp_path):
    from tests.fake_arcface import write_fake_arcface

    pack = tmp_path / "insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    (pack / "det_10g.onnx").symlink_to(scrfd_onnx)
    arcface = write_fake_arcface(pack / "w600k_r50.onnx")
    audio, out = tmp_path / "a.wav", tmp_path / "out.mp4"
    run_ffmpeg(["-i", str(media("retalking_2.wav")), "-t", "0.6", str(audio)])
    r = run_cli("dub", str(clip), str(audio), "-o", str(out), "--checkpoint", str(fake_ckpt("wav2lip")),
                "--detector-weights", str(fake_ckpt("s3fd")), "--recognition-weights", str(arcface),
                "--ref-face", f"{clip}@0.3", "--batch-size", "4",
                env={"INSIGHTFACE_HOME": str(tmp_path / "insightface")})
    assert r.returncode != 70 and "internal error" not in r.stderr, r.stderr
    assert "Maximum allowed dimension" not in r.stderr
