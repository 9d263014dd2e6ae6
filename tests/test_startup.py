"""Start-up: what `lipsync` imports before it has work to do, what dub() spends before its first frame
(DubResult.startup), and the pieces that make it shorter (the probe's background scan, mapped weights)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from synth import make_audio, make_image, make_video
from torch import nn

from lipsync_cli.dub import STARTUP_PHASES, DubOptions, dub
from lipsync_cli.errors import VideoOpenError
from lipsync_cli.media.probe import PendingProbe, probe

HEAVY = ("torch", "cv2", "librosa", "scipy", "onnxruntime", "insightface")
BOX = (40, 20, 120, 100)


def _imported_after(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter has imported after running ``code``."""
    probe_code = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe_code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LIPSYNC_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return eval(out.stdout.strip().splitlines()[-1])


def test_importing_the_cli_imports_no_heavy_module():
    assert _imported_after("import lipsync_cli.cli") == []


def test_dub_help_imports_no_heavy_module():
    code = ("import contextlib, io\nfrom lipsync_cli.cli import run\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n    assert run(['dub', '--help']) == 0\n"
            "assert '--output' in out.getvalue()")
    assert _imported_after(code) == []


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("startup")
    return {"video": make_video(d / "clip.mp4", seconds=0.6, fps=25), "speech": make_audio(d / "s.wav", seconds=0.4),
            "image": make_image(d / "still.png"), "dir": d}


def test_pending_probe_equals_probe(media):
    pending = PendingProbe(media["video"])
    full = pending.result()
    assert full == probe(media["video"]) and full.n_frames == 15
    # the header alone knows the size and the streams before the scan ends; the count is the scan's
    assert (pending.header.width, pending.header.height, pending.header.streams) == (160, 120, full.streams)
    assert pending.header == probe(media["video"], count_frames=False)
    still = PendingProbe(media["image"])
    assert still.header == still.result() == probe(media["image"])


def test_pending_probe_reports_a_bad_file_at_once(media):
    bad = media["dir"] / "not_media.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoOpenError):
        PendingProbe(bad)


def test_dub_result_times_its_start_up(media, fake_ckpt):
    out = media["dir"] / "out.mp4"
    res = dub(media["video"], media["speech"], out,
              DubOptions(checkpoint=fake_ckpt("wav2lip"), box=BOX, device="cpu", precision="fp32", offline=True))
    assert res.frames == 10 and out.exists()
    assert set(res.startup) == set(STARTUP_PHASES) | {"total"}
    phases = [res.startup[k] for k in STARTUP_PHASES]
    assert all(v >= 0 for v in phases)
    assert res.startup["model"] > 0.01  # 36 M parameters read and folded
    assert res.startup["probe"] > 0 and res.startup["audio"] > 0
    assert res.startup["detector"] == 0.0  # a fixed box loads no detector
    assert sum(phases) <= res.startup["total"] <= res.wall_seconds


def test_dub_times_the_detector_it_loads(media, fake_ckpt, scrfd_onnx):
    res = dub(media["video"], media["speech"], media["dir"] / "det.mp4",
              DubOptions(checkpoint=fake_ckpt("wav2lip"), detector="insightface", detector_weights=scrfd_onnx,
                         det_size=160, device="cpu", precision="fp32", offline=True))
    assert res.frames == 10 and res.startup["detector"] > 0
    assert res.startup["total"] >= sum(res.startup[k] for k in STARTUP_PHASES)


def test_startup_line_names_every_phase():
    from lipsync_cli.cli.dub import seconds_since_process_start, startup_line

    line = startup_line({"probe": 0.05, "audio": 0.2, "imports": 1.5, "model": 0.3, "detector": 0.0,
                         "total": 2.1}, before=0.4)
    assert line == ("start-up 2.50 s before the first frame: python + CLI 0.40, probe 0.05, audio 0.20, "
                    "imports 1.50, model 0.30, detector 0.00")
    assert startup_line({"probe": 0.1, "total": 0.1}).startswith("start-up 0.10 s before the first frame: probe")
    age = seconds_since_process_start()
    if sys.platform.startswith("linux"):
        assert age is not None and 0 < age < 24 * 3600


def test_mapped_checkpoint_loads_the_same_weights(fake_ckpt):
    from lipsync_cli.checkpoint import load_file

    path = fake_ckpt("wav2lip")
    read, mapped = load_file(path), load_file(path, mmap=True)
    assert read["state_dict"].keys() == mapped["state_dict"].keys()
    assert all(torch.equal(v, mapped["state_dict"][k]) for k, v in read["state_dict"].items())


def test_folding_leaves_the_original_untouched():
    from lipsync_cli.models.fuse import fuse_conv_bn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    net.eval()
    before = net[0].weight.detach().clone()
    fused = fuse_conv_bn(net)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), atol=1e-5, rtol=1e-4)
    assert isinstance(fused[1], nn.Identity) and isinstance(net[1], nn.BatchNorm2d)
    assert torch.equal(net[0].weight, before) and net[0].bias is None and fused[0].bias is not None
