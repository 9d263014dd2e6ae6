"""Face detection: S3FD numerics/post-processing against ../shared/compat, SCRFD on real frames, the factory
and the downscale wrapper."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from lipsync_cli.errors import BadOption, CheckpointError, CheckpointMismatch, WeightsNotFound
from lipsync_cli.faces import FaceDetector, ScaledDetector, load_detector, nms
from lipsync_cli.faces.detect import detection_size, usable_boxes
from lipsync_cli.faces.s3fd import S3FD, S3FDOptions, decode, load_s3fd, postprocess, preprocess
from tests.conftest import media

cv2 = pytest.importorskip("cv2")


def _tol(ref: np.ndarray) -> float:
    return 1e-4 * max(1.0, float(np.abs(ref).max()))


@pytest.fixture(scope="module")
def s3fd_ref(compat_dir):
    return dict(np.load(compat_dir / "s3fd_ref.npz"))


@pytest.fixture(scope="module")
def s3fd_net(fake_ckpt):
    return load_s3fd(fake_ckpt("s3fd"))


# ---------------------------------------------------------------- S3FD


def test_s3fd_keys_and_shapes_match_upstream(compat_dir):
    expected = [(k, list(s)) for k, s in json.loads((compat_dir / "s3fd_keys.json").read_text())]
    assert [(k, list(v.shape)) for k, v in S3FD().state_dict().items()] == expected


def test_s3fd_preprocess_and_raw_outputs_match_reference(s3fd_net, s3fd_ref):
    x = preprocess(s3fd_ref["image_bgr"])
    np.testing.assert_array_equal(x.numpy(), s3fd_ref["net_input"])
    with torch.inference_mode():
        outs = s3fd_net(x)
    assert len(outs) == 12
    for i, out in enumerate(outs):
        ref = s3fd_ref[f"out_{i:02d}"]
        assert out.shape == ref.shape, i
        np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=_tol(ref), err_msg=f"out_{i:02d}")


def _pp_outputs(ref) -> list[torch.Tensor]:
    return [torch.from_numpy(ref[f"pp_out_{i:02d}"]) for i in range(12)]


def test_s3fd_decode_gives_the_upstream_candidates(s3fd_ref):
    dets = decode(_pp_outputs(s3fd_ref)).numpy()  # (2, A, 5)
    cands = s3fd_ref["pp_candidates"]  # (C, 2, 5): anchors above 0.05 in either image, duplicates included
    for b in range(2):
        mine = dets[b][dets[b, :, 4] > 0.05]
        theirs = np.unique(cands[:, b][cands[:, b, 4] > 0.05], axis=0)
        assert len(mine) == len(theirs)
        np.testing.assert_allclose(np.unique(mine, axis=0), theirs, rtol=0, atol=1e-4)


def test_s3fd_nms_keeps_the_upstream_rows(s3fd_ref):
    for b in range(2):
        cands = s3fd_ref["pp_candidates"][:, b]
        keep, ref_keep = nms(cands, 0.3), s3fd_ref[f"pp_nms_keep_{b}"]
        assert len(keep) == len(ref_keep)
        # indices may differ only between identical rows (a position listed once per batch image)
        np.testing.assert_array_equal(cands[keep], cands[ref_keep])


def test_s3fd_postprocess_reproduces_final_boxes(s3fd_ref):
    res = postprocess(_pp_outputs(s3fd_ref), S3FDOptions(max_candidates=10**6))
    for b in range(2):
        final = s3fd_ref[f"pp_final_boxes_{b}"]
        assert res[b].dtype == np.float32 and res[b].shape == final.shape
        np.testing.assert_allclose(res[b], final, rtol=0, atol=1e-4)
        first = tuple(int(v) for v in np.clip(res[b][0, :4], 0, None))  # Wav2Lip's first-face rule
        assert first == tuple(s3fd_ref[f"pp_first_face_xyxy_{b}"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_s3fd_boxes_do_not_depend_on_the_outputs_dtype(s3fd_ref, dtype):
    """Raw outputs given in bf16/fp16 (a network run under autocast) decode, in float32, to exactly the boxes
    of the same values given in float32: anchors and offsets are never built in the outputs' dtype."""
    low = [o.to(dtype) for o in _pp_outputs(s3fd_ref)]  # values representable in dtype
    want = postprocess([o.float() for o in low], S3FDOptions(max_candidates=10**6))
    got = postprocess(low, S3FDOptions(max_candidates=10**6))
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and len(w) > 10
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-4)


class _FixedHeads(torch.nn.Module):
    """A stand-in S3FD whose 12 head outputs are given: each passes through an identity 1x1 convolution, so
    under autocast they come out in the autocast dtype, as a real network's would."""

    def __init__(self, outputs: list[torch.Tensor]):
        super().__init__()
        self.outputs = outputs
        self.weight = torch.nn.Parameter(torch.eye(4)[:, :, None, None])  # (4, 4, 1, 1)

    def forward(self, x):
        return [torch.nn.functional.conv2d(o, self.weight[: o.shape[1], : o.shape[1]]) for o in self.outputs]


def _faces_outputs(height: int, width: int) -> list[torch.Tensor]:
    """Head outputs of one frame with three confident faces far from the origin (where bf16 has 2-4 px steps)."""
    outs = []
    for stride in (4, 8, 16, 32, 64, 128):
        h, w = height // stride, width // stride
        cls = torch.zeros(1, 2, h, w)
        cls[:, 0] = 4.0  # background everywhere
        outs += [cls, torch.zeros(1, 4, h, w)]
    for level, (cy, cx), loc in [(2, (20, 37), (0.31, -0.23, 0.47, 0.13)), (3, (11, 17), (-0.37, 0.29, 0.21, 0.33)),
                                 (1, (50, 71), (0.43, 0.41, -0.17, 0.39))]:
        outs[2 * level][0, :, cy, cx] = torch.tensor([0.0, 6.0])
        outs[2 * level + 1][0, :, cy, cx] = torch.tensor(loc)
    return outs


def test_s3fd_under_bf16_autocast_gives_the_fp32_boxes_within_a_pixel():
    """The detection pass runs under the generator's autocast: the boxes must not be rounded to bf16's steps."""
    from lipsync_cli.faces.s3fd import S3FDDetector

    frame = np.zeros((480, 640, 3), np.uint8)
    det = S3FDDetector(_FixedHeads(_faces_outputs(480, 640)))  # type: ignore[arg-type]
    fp32 = det.detect([frame])[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = det.detect([frame])[0]
    assert fp32.shape == bf16.shape == (3, 5) and fp32.dtype == bf16.dtype == np.float32
    assert fp32[:, :4].max() > 512  # coordinates where bf16 steps are 4 px
    np.testing.assert_allclose(bf16[:, :4], fp32[:, :4], rtol=0, atol=1.0)


def test_s3fd_topk_caps_a_flood_of_candidates():
    """Every anchor a confident face: NMS sees at most max_candidates boxes and stays fast."""
    shapes = [(160, 160), (80, 80), (40, 40), (24, 24), (12, 12), (6, 6)]
    outs = []
    g = torch.Generator().manual_seed(0)
    for h, w in shapes:
        cls = torch.stack([torch.zeros(2, h, w), torch.full((2, h, w), 8.0)], dim=1)  # p(face) ~ 0.9997
        cls[:, 1] += torch.rand(2, h, w, generator=g)  # distinct scores
        outs += [cls, torch.randn(2, 4, h, w, generator=g) * 0.5]
    n_anchors = sum(h * w for h, w in shapes)
    assert n_anchors > 30000
    t0 = time.perf_counter()
    capped = postprocess(outs, S3FDOptions(max_candidates=100))
    elapsed = time.perf_counter() - t0
    assert len(capped) == 2
    for dets in capped:
        assert 0 < len(dets) <= 100
        assert np.all(np.diff(dets[:, 4]) <= 0)  # score-descending
    # the cap keeps the best 100 candidates: the top box is the global best anchor
    best = decode(outs)[0, :, 4].max().item()
    assert capped[0][0, 4] == pytest.approx(best)
    assert elapsed < 5.0


@pytest.mark.slow  # importing torchvision.ops alone takes ~20 s on a busy 2-core CPU
def test_box_iou_and_nms_agree_with_torchvision():
    """One home for IoU and NMS (faces/boxes.py, numpy): the same numbers as torchvision.ops, with the "+1 pixel"
    convention obtained there by widening the boxes."""
    tv = pytest.importorskip("torchvision.ops")
    from lipsync_cli.faces.boxes import box_iou

    rng = np.random.RandomState(0)
    xy = rng.uniform(0, 200, (300, 2))
    dets = np.concatenate([xy, xy + rng.uniform(5, 60, (300, 2)), rng.uniform(0, 1, (300, 1))], axis=1)
    a, b = torch.from_numpy(dets[:40, :4]), torch.from_numpy(dets[40:90, :4])
    np.testing.assert_allclose(box_iou(dets[:40], dets[40:90]), tv.box_iou(a, b).numpy(), rtol=1e-12)
    one = torch.tensor([0.0, 0, 1, 1], dtype=torch.float64)
    np.testing.assert_allclose(box_iou(dets[:40], dets[40:90], plus_one=True),
                               tv.box_iou(a + one, b + one).numpy(), rtol=1e-12)
    for thr in (0.3, 0.4):
        want = tv.nms(torch.from_numpy(dets[:, :4]) + one, torch.from_numpy(dets[:, 4]), thr).numpy()
        np.testing.assert_array_equal(nms(dets, thr), want)
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10])[0, 0] == pytest.approx(1 / 3)
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0])[0, 0] == 0.0  # empty boxes overlap nothing (never NaN)
    assert box_iou(np.zeros((0, 4)), dets).shape == (0, 300)


def test_s3fd_detector_batched_equals_single_and_wrapper_scales(fake_ckpt, s3fd_ref):
    det = load_detector("sfd", fake_ckpt("s3fd"), det_size=80, batch_size=2)  # 160x128 frames -> 80x64
    assert isinstance(det, FaceDetector) and det.name == "s3fd"
    img = s3fd_ref["image_bgr"][0]  # (128, 160, 3)
    frames = [img, np.ascontiguousarray(img[::-1]), img]
    batched = det.detect(frames)
    assert len(batched) == 3
    small = cv2.resize(frames[1], (80, 64), interpolation=cv2.INTER_AREA)
    single = det.backend.detect([small])[0] * np.array([2, 2, 2, 2, 1], np.float32)
    single = usable_boxes(single, 160, 128)  # the wrapper clips to the frame and drops what is left of no size
    # fake weights give exp-amplified boxes: compare relatively
    np.testing.assert_allclose(batched[1], single, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(batched[0], batched[2], rtol=1e-3, atol=1e-3)  # same frame, other batch
    for d in batched:
        assert d.dtype == np.float32 and d.ndim == 2 and d.shape[1] == 5 and len(d) > 0
        assert np.all(d[:, 4] > 0.5) and np.all(np.diff(d[:, 4]) <= 0)


# ---------------------------------------------------------------- the wrapper and the factory


class _StubBackend:
    """Reports one fixed box per frame (in the frame it receives) and records what it was given."""

    name = "stub"

    def __init__(self):
        self.calls: list[tuple[int, tuple[int, ...]]] = []

    def detect(self, frames):
        self.calls.append((len(frames), frames[0].shape))
        h, w = frames[0].shape[:2]
        return [np.array([[w * 0.25, h * 0.5, w * 0.75, h * 1.0, 0.9]], np.float32) for _ in frames]


def test_wrapper_downscales_batches_and_maps_back():
    stub = _StubBackend()
    det = ScaledDetector(stub, det_size=640, batch_size=2)
    frames = [np.zeros((1080, 1920, 3), np.uint8)] * 5
    out = det.detect(frames)
    assert [n for n, _ in stub.calls] == [2, 2, 1]
    assert stub.calls[0][1] == (360, 640, 3)
    assert len(out) == 5
    np.testing.assert_allclose(out[4], [[480, 540, 1440, 1080, 0.9]], rtol=1e-5)


def test_wrapper_never_upscales():
    stub = _StubBackend()
    out = ScaledDetector(stub, det_size=640).detect([np.zeros((100, 200, 3), np.uint8)])
    assert stub.calls[0][1] == (100, 200, 3)
    np.testing.assert_allclose(out[0], [[50, 50, 150, 100, 0.9]])
    assert detection_size(100, 200, 640) == (100, 200)
    assert detection_size(1920, 1080, 640) == (640, 360)


def test_wrapper_rejects_bad_frames():
    det = ScaledDetector(_StubBackend())
    assert det.detect([]) == []
    with pytest.raises(BadOption, match="share a size"):
        det.detect([np.zeros((10, 10, 3), np.uint8), np.zeros((10, 12, 3), np.uint8)])
    with pytest.raises(BadOption, match="uint8"):
        det.detect([np.zeros((10, 10, 3), np.float32)])


def test_load_detector_errors(tmp_path, fake_ckpt, monkeypatch):
    with pytest.raises(BadOption, match="unknown face detector"):
        load_detector("dlib")
    with pytest.raises(WeightsNotFound):
        load_detector("s3fd")
    with pytest.raises(WeightsNotFound, match="nope.pth"):
        load_detector("s3fd", tmp_path / "nope.pth")
    with pytest.raises(CheckpointMismatch, match="S3FD"):
        load_detector("s3fd", fake_ckpt("disc_qual"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "if_home"))
    with pytest.raises(WeightsNotFound, match="if_home") as err:
        load_detector("insightface")  # default pack buffalo_l, not installed
    assert "buffalo_l" in str(err.value) and err.value.hint
    with pytest.raises(WeightsNotFound, match="missing.onnx"):
        load_detector("insightface", tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(CheckpointError):
        load_detector("insightface", bad)


def test_insightface_pack_name_is_resolved(tmp_path, monkeypatch, scrfd_onnx):
    pack = tmp_path / "models" / "mypack"
    pack.mkdir(parents=True)
    (pack / "det_2.5g.onnx").symlink_to(scrfd_onnx)
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path))
    det = load_detector("insightface", "mypack", det_size=320, threads=1)
    assert det.backend.path.name == "det_2.5g.onnx"
    out = det.detect([np.zeros((240, 320, 3), np.uint8)])  # a blank frame has no face
    assert out[0].shape == (0, 5) and out[0].dtype == np.float32


# ---------------------------------------------------------------- SCRFD on real frames


def _video_frame(name: str, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(media(name)))
    try:
        for _ in range(index + 1):
            ok, frame = cap.read()
            assert ok, f"{name} has fewer than {index + 1} frames"
    finally:
        cap.release()
    return frame


@pytest.fixture(scope="module")
def scrfd(scrfd_onnx):
    return load_detector("insightface", scrfd_onnx, threads=2)


def _close_box(box, expected, frac=0.2):
    """Each coordinate within ``frac`` of the expected box's size."""
    w, h = expected[2] - expected[0], expected[3] - expected[1]
    tol = np.array([w, h, w, h]) * frac
    assert np.all(np.abs(np.asarray(box[:4]) - expected) <= tol), (box, expected)


def test_scrfd_one_face_on_liveportrait(scrfd):
    frame = _video_frame("liveportrait_s18.mp4", 60)  # 2 s at 30 fps, 1280x720
    dets = scrfd.detect([frame])[0]
    assert len(dets) == 1 and dets[0, 4] > 0.5
    _close_box(dets[0], np.array([639, 102, 864, 403]))


def test_scrfd_three_faces_on_hamilton(scrfd):
    # frame 65 is 3 s of presentation time (the video stream starts at 0.85 s), a three-person shot
    dets = scrfd.detect([_video_frame("facerec_short_hamilton_clip.mp4", 65)])[0]
    assert len(dets) == 3
    assert np.all(np.diff(dets[:, 4]) <= 0)


def test_scrfd_two_people_and_blank(scrfd):
    img = cv2.imread(str(media("facerec_two_people.jpg")))
    dets, blank = scrfd.detect([img, np.zeros_like(img)])
    assert len(dets) == 2
    left, right = sorted(dets.tolist(), key=lambda d: d[0])
    _close_box(left, np.array([237, 26, 387, 223]))
    _close_box(right, np.array([789, 38, 943, 252]))
    assert blank.shape == (0, 5)


def test_scrfd_boxes_follow_a_2x_upscale(scrfd_onnx):
    img = cv2.imread(str(media("facerec_two_people.jpg")))  # 1126x661
    small = cv2.resize(img, (563, 330), interpolation=cv2.INTER_AREA)
    big = cv2.resize(small, (1126, 660), interpolation=cv2.INTER_LINEAR)
    det = load_detector("insightface", scrfd_onnx, det_size=563, threads=2)
    a, b = det.detect([small])[0], det.detect([big])[0]  # big is shrunk back to 563 px inside
    assert len(a) == len(b) == 2
    a, b = a[np.argsort(a[:, 0])], b[np.argsort(b[:, 0])]
    np.testing.assert_allclose(b[:, :4], 2 * a[:, :4], atol=6.0)


def test_scrfd_square_mode_matches_insightface(scrfd_onnx):
    insightface = pytest.importorskip("insightface")
    img = cv2.imread(str(media("facerec_two_people.jpg")))
    ref = insightface.model_zoo.get_model(str(scrfd_onnx), providers=["CPUExecutionProvider"])
    ref.prepare(ctx_id=-1, input_size=(640, 640))
    expected, _ = ref.detect(img)
    mine = load_detector("insightface", scrfd_onnx, det_size=640, square=True, threads=2)
    got = mine.backend.detect_one(img)[0]  # the backend alone: no pre-shrinking
    assert got.shape == expected.shape == (2, 5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)
