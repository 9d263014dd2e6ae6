"""dub --enhance (lipsync_cli/enhance): alignment, ONNX restorers, mouth-only blending, no added flicker."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from synth import make_audio, make_image, make_video

from lipsync_cli.blend import mouth_mask
from lipsync_cli.dub import DubOptions, dub
from lipsync_cli.enhance import Enhancer, align
from lipsync_cli.enhance.restorers import OnnxRestorer, TorchGFPGAN, load_restorer
from lipsync_cli.errors import BadOption

BOX = (40, 20, 120, 100)  # inside the 160x120 synthetic frames


class TinyRestorer(torch.nn.Module):
    """A random 2-layer network in the published restorer layout: (1, 3, N, N) RGB in [-1, 1] -> same."""

    def __init__(self, with_weight: bool = False):
        super().__init__()
        torch.manual_seed(3)
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 3, 3, padding=1)
        self.with_weight = with_weight

    def forward(self, x, w=None):
        y = self.b(torch.relu(self.a(x)))
        if self.with_weight:  # CodeFormer's fidelity input: changes the output
            y = y * w.to(y.dtype)
        return torch.tanh(x + y)


def export(net: torch.nn.Module, path, size: int, names: list[str], dynamic_batch: bool = False):
    args = (torch.zeros(1, 3, size, size),) + ((torch.tensor(0.5, dtype=torch.float64),) if len(names) > 1 else ())
    axes = {names[0]: {0: "batch"}, "restored": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), args, str(path), input_names=names, output_names=["restored"],
                          dynamic_axes=axes, dynamo=False)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("enhance")
    return {
        "video": make_video(d / "clip.mp4", seconds=0.4, fps=25),
        "speech": make_audio(d / "speech.wav", seconds=0.4),
        "silence": make_audio(d / "silence.wav", seconds=0.4, kind="silence"),
        "image": make_image(d / "still.png"),
        "onnx": export(TinyRestorer(), d / "tiny.onnx", 64, ["face_in"]),
        "dir": d,
    }


# --- alignment ---------------------------------------------------------------------------------------------

def test_similarity_maps_five_points_exactly_onto_the_template():
    tpl = align.template(512)
    theta, scale, shift = np.deg2rad(17.0), 0.37, np.array([55.0, -12.5])
    rot = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    points = tpl @ rot.T + shift  # a rotated, shrunk, moved face
    m = align.similarity(points, tpl)
    np.testing.assert_allclose(points @ m[:, :2].T + m[:, 2], tpl, atol=1e-9)
    # and the inverse takes the template back to the face
    back = align.invert(m)
    np.testing.assert_allclose(tpl @ back[:, :2].T + back[:, 2], points, atol=1e-9)
    # other sizes: the template scales with the crop
    np.testing.assert_allclose(align.template(256), tpl / 2)


def test_box_points_are_an_upright_face_inside_the_box():
    pts = align.box_points((100, 50, 300, 330))
    assert (pts[:, 0] > 100).all() and (pts[:, 0] < 300).all() and (pts[:, 1] > 50).all() and (pts[:, 1] < 330).all()
    assert pts[0, 1] == pts[1, 1] and pts[3, 1] == pts[4, 1]  # eyes level, mouth corners level
    assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0] and pts[0, 1] < pts[2, 1] < pts[3, 1]


def test_warp_then_unwarp_returns_the_face_to_its_place():
    h, w = 240, 320
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    frame = np.stack([xx * 0.7, yy, 128 + 60 * np.sin(xx / 9) * np.cos(yy / 11)], -1).astype(np.uint8)
    box = (110, 60, 230, 200)
    pts = align.box_points(box)
    m = align.similarity(pts, align.template(128))
    # warp_face applies m (frame -> crop): a marker on the left eye lands where m sends it, near the template's eye
    centre = np.round(pts[0])
    marked = frame.copy()
    cv2.circle(marked, tuple(int(v) for v in centre), 3, (255, 255, 255), -1)
    crop = align.warp_face(marked, m, 128)
    ys, xs = np.nonzero(crop.min(axis=2) > 240)
    expected = m[:, :2] @ centre + m[:, 2]
    assert np.hypot(xs.mean() - expected[0], ys.mean() - expected[1]) < 1.0
    assert np.hypot(*(expected - align.template(128)[0])) < 4  # box points are close to a similarity of it
    # and the crop goes back where it came from
    crop = align.warp_face(frame, m, 512)  # upsampled crop: the round trip is nearly lossless
    pixels, coverage = align.unwarp_face(crop, m, box)
    roi = frame[box[1]:box[3], box[0]:box[2]].astype(np.float32)
    inner = coverage > 0.999
    assert inner.mean() > 0.5  # the aligned crop covers most of the box
    err = np.abs(pixels - roi)[inner]
    assert err.mean() < 1.0 and np.percentile(err, 99) < 6, (err.mean(), np.percentile(err, 99))
    assert coverage.min() >= 0 and coverage.max() <= 1


# --- restorers ---------------------------------------------------------------------------------------------

def test_onnx_restorer_reads_name_size_and_fidelity_from_the_model(tmp_path):
    net = TinyRestorer(with_weight=True)
    path = export(net, tmp_path / "codeformer_like.onnx", 48, ["x_custom", "weight"], dynamic_batch=True)
    r = load_restorer(path)
    assert isinstance(r, OnnxRestorer)
    assert (r.input_name, r.size, r.batched, list(r.extra)) == ("x_custom", 48, True, ["weight"])
    faces = np.random.RandomState(0).randint(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    got = r.restore(faces)
    x = torch.from_numpy(faces[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255 * 2 - 1)
    with torch.no_grad():
        ref = net(x, torch.tensor(0.5, dtype=torch.float64)).numpy()
    ref = np.round((np.clip(ref, -1, 1) + 1) / 2 * 255).astype(np.uint8).transpose(0, 2, 3, 1)[..., ::-1]
    assert got.shape == faces.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert np.abs(got.astype(int) - faces.astype(int)).mean() > 5  # it did restore something


def test_onnx_restorer_refuses_files_of_another_layout(tmp_path, files):
    from lipsync_cli.errors import CheckpointError, CheckpointMismatch

    class Flat(torch.nn.Module):
        def forward(self, x):
            return x * 2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Flat(), (torch.zeros(1, 10),), str(tmp_path / "flat.onnx"), dynamo=False)
    with pytest.raises(CheckpointMismatch, match="published layout"):
        load_restorer(tmp_path / "flat.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="cannot load ONNX face restorer"):
        load_restorer(tmp_path / "junk.onnx")
    with pytest.raises(BadOption, match="noise random"):
        load_restorer(files["onnx"], noise="random")


def test_enhance_options_are_checked():
    for bad in (dict(enhance=True, enhance_strength=1.5), dict(enhance=True, enhance_noise="fresh"),
                dict(enhancer_weights="x.onnx")):
        with pytest.raises(BadOption):
            DubOptions(**bad).validate()


# --- in the dub --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generator(fake_ckpt):
    from lipsync_cli.checkpoint import load_generator

    return load_generator(fake_ckpt("wav2lip"))  # loaded once for every dub of this module


def _dub(files, generator, name: str, audio: str = "speech", video: str = "video", restorer=None, **enhance):
    got: dict[int, np.ndarray] = {}
    opts = DubOptions(box=BOX, device="cpu", precision="fp32", batch_size=8, **enhance)
    res = dub(files[video], files[audio], files["dir"] / f"{name}.mp4", opts, restorer=restorer, model=generator,
              frame_sink=lambda i, f: got.__setitem__(i, f.copy()))
    return res, np.stack([got[i] for i in range(len(got))])


def test_enhance_changes_pixels_only_inside_the_mouth_mask(files, generator):
    plain_res, plain = _dub(files, generator, "plain")
    res, enhanced = _dub(files, generator, "enhanced", enhance=True, enhancer_weights=files["onnx"])
    assert res.frames == plain_res.frames == len(enhanced) == 10
    assert "enhance" in res.stage_seconds and res.stage_frames["enhance"] == 10
    assert "enhance" not in plain_res.stage_seconds
    changed = (enhanced != plain).any(axis=(0, 3))  # (H, W): pixels any frame changed
    allowed = np.zeros(changed.shape, bool)
    x1, y1, x2, y2 = BOX
    allowed[y1:y2, x1:x2] = mouth_mask(x2 - x1, y2 - y1)[:, :, 0] > 0
    assert changed.any() and not (changed & ~allowed).any()
    # the mouth itself clearly changed; the top 30% of the box (eyes) is bit-identical to the plain dub
    d = np.abs(enhanced.astype(int) - plain.astype(int))
    assert d[:, y1 + (y2 - y1) // 2:y2, x1:x2].mean() > 2
    assert not d[:, y1:y1 + int(0.3 * (y2 - y1))].any()


def _tiny_gfpgan(noise: str) -> TorchGFPGAN:
    from lipsync_cli.models.gfpgan import GFPGANv1Clean

    torch.manual_seed(0)
    net = GFPGANv1Clean(out_size=32, style_dim=16, num_mlp=2, narrow=1 / 32)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".weight") and p.shape == (1,):
                p.fill_(0.5)  # noise strengths (zero at init): make the noise visible
    return TorchGFPGAN(net, "cpu", "fp32", batch=4, noise=noise)


@pytest.mark.slow
def test_fixed_noise_adds_no_flicker_on_a_still_with_steady_audio(files, generator):
    """A still image and silence: the plain dub's mouth is the same in every frame. With --enhance and fixed
    noise it must stay so (frame-to-frame difference no larger than without); GFPGANer's random noise flickers."""
    x1, y1, x2, y2 = BOX

    def flicker(frames: np.ndarray) -> float:
        mouth = frames[:, y1 + (y2 - y1) // 2:y2, x1:x2].astype(np.float32)
        return float(np.abs(np.diff(mouth, axis=0)).mean())

    _, plain = _dub(files, generator, "still_plain", audio="silence", video="image")
    _, fixed = _dub(files, generator, "still_fixed", audio="silence", video="image", restorer=_tiny_gfpgan("fixed"),
                    enhance=True)
    _, rand = _dub(files, generator, "still_random", audio="silence", video="image",
                   restorer=_tiny_gfpgan("random"), enhance=True, enhance_noise="random")
    assert not np.array_equal(fixed, plain)  # the restorer did change the mouth
    assert flicker(fixed) <= flicker(plain), (flicker(fixed), flicker(plain))
    assert flicker(rand) > flicker(plain) + 0.1, (flicker(rand), flicker(plain))  # the test can fail


def test_enhancer_batches_faces_and_leaves_other_frames_alone():
    class Identity:
        size = 64

        def __init__(self):
            self.calls = []

        def restore(self, faces):
            self.calls.append(len(faces))
            return 255 - faces  # a visible change

    frames = [np.full((120, 160, 3), v, np.uint8) for v in (50, 100, 150)]
    before = [f.copy() for f in frames]
    r = Identity()
    Enhancer(r, 0.0).apply(frames, [BOX] * 3)  # strength 0: nothing runs, nothing changes
    assert r.calls == [] and all(np.array_equal(f, b) for f, b in zip(frames, before))
    Enhancer(r, 0.5).apply(frames, [BOX] * 3)
    assert r.calls == [3]
    for f, b in zip(frames, before):
        changed = (f != b).any(axis=2)
        assert changed.any() and not changed[:BOX[1]].any() and not changed[:, :BOX[0]].any()
        assert not changed[BOX[3]:].any() and not changed[:, BOX[2]:].any()


def test_scrfd_points_follow_the_face_and_are_smoothed(scrfd_onnx, testmedia):
    """With --detector insightface the points are SCRFD's (found again around the dubbed box), in the box's
    coordinates and averaged over time: a steady face gives steady points; a cut restarts the average."""
    from lipsync_cli.enhance.landmarks import ScrfdPoints
    from lipsync_cli.faces.scrfd import SCRFDDetector

    frame = cv2.imread(str(testmedia / "facerec_obama-720p.jpg"))
    det = SCRFDDetector(scrfd_onnx, det_size=640)
    dets, kps = det.detect_one(frame)
    box = dets[0, :4].round() + np.array([0, 0, 0, 10])  # the dub's box: the default pads (10 px at the bottom)
    points = ScrfdPoints(SCRFDDetector(scrfd_onnx, det_size=192))
    first = points(frame, box)
    assert points.found == 1
    assert np.abs(first - kps[0]).max() < 4  # SCRFD's own points, found on a 192 px neighbourhood
    assert np.abs(first - align.box_points(box)).max() > 2  # not just the mean layout
    np.testing.assert_allclose(points(frame, box), first, atol=1e-6)  # steady face, steady points
    # the box moves by 6 px: the points move with it at once (they live in box coordinates)
    shifted = frame[:, 6:]
    moved = points(np.ascontiguousarray(shifted), box - np.array([6, 0, 6, 0]))
    assert np.abs(moved - (first - [6, 0])).max() < 2
    # an empty frame: the last layout is kept, nothing raises
    blank = np.zeros_like(frame)
    kept = points(blank, box)
    assert points.found == 3 and np.abs(kept - first).max() < 2


@pytest.mark.slow  # two interpreter starts and a weight load: ~20 s on an idle 2-core CPU
def test_cli_dub_enhance_reports_its_own_stage(files, fake_ckpt):
    import os
    import subprocess
    import sys

    from lipsync_cli.media.probe import probe

    out = files["dir"] / "cli_enhance.mp4"
    env = {**os.environ, "LIPSYNC_OFFLINE": "1"}
    env.pop("LIPSYNC_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "lipsync_cli", "dub", str(files["video"]), str(files["speech"]), "-o",
                        str(out), "--checkpoint", str(fake_ckpt("wav2lip")), "--box", *map(str, BOX), "--enhance",
                        "--enhancer-weights", str(files["onnx"]), "--enhance-strength", "0.8"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert probe(out).n_frames == 10
    assert " enhance " in r.stderr.split("stage frames/s:")[1]  # the summary names the stage
    bad = subprocess.run([sys.executable, "-m", "lipsync_cli", "dub", str(files["video"]), str(files["speech"]),
                          "-o", str(out), "--enhance", "--enhance-strength", "2"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode != 0 and "--enhance-strength must be in 0..1" in bad.stderr
    assert "Traceback" not in bad.stderr
