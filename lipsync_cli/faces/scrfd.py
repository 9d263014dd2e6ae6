"""insightface's SCRFD face detector, run with onnxruntime directly.

SCRFD ONNX files (``det_10g.onnx`` of the ``buffalo_l`` pack, ``scrfd_2.5g_bnkps.onnx``, ...) output, per
stride (8, 16, 32), a face score, four distances from the anchor centre to the box sides and optionally five
keypoints. We decode them exactly as ``insightface.model_zoo.SCRFD`` does (distance2bbox, score >= 0.5, NMS
0.4 with the "+1 pixel" convention) but run the session ourselves: the import is light (no ``onnx`` / protobuf
parse), the thread count is ours to choose, and the input need not be a padded square.

Input sizes: ``square=True`` letterboxes every frame into ``det_size x det_size`` like insightface's
``prepare(input_size=(det_size, det_size))`` (bit-identical to ``SCRFD.detect``); the default fits the network
input to the frame (longest side ``det_size``, padded up to a multiple of 32), which skips the padding rows of
a 16:9 frame and is ~40% faster for the same boxes within a pixel or two.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from lipsync_cli.errors import BadOption, CheckpointError, CheckpointMismatch, WeightsNotFound
from lipsync_cli.faces.boxes import nms

log = logging.getLogger(__name__)

DEFAULT_PACK = "buffalo_l"  # insightface's default model pack; its detector is det_10g.onnx (SCRFD-10GF)
SCRFD_MEAN = 127.5  # input pixels are (RGB - 127.5) / 128
SCRFD_STD = 128.0
SCRFD_ALIGN = 32  # the largest stride: network inputs are padded to a multiple of it
SCRFD_SCORE_THRESHOLD = 0.5
SCRFD_NMS_THRESHOLD = 0.4
PACK_HINT = ("download an insightface model pack (e.g. buffalo_l.zip from the insightface GitHub "
             "releases) and unzip it into ~/.insightface/models/, set $INSIGHTFACE_HOME, "
             "or pass an SCRFD .onnx file")


def insightface_root() -> Path:
    """Where insightface keeps model packs: ``$INSIGHTFACE_HOME`` or ``~/.insightface``."""
    from lipsync_cli.weights import insightface_home

    return insightface_home()


def resolve_weights(weights: str | os.PathLike | None) -> Path:
    """An SCRFD ``.onnx`` path from a file path, a pack directory, or a pack name (default ``buffalo_l``).

    A pack name is looked up as ``<dir>/<pack>/det_*.onnx`` in every folder of ``lipsync weights list``
    (checkout ``weights/``, ``./weights``, the user cache), then ``<root>/models/<pack>`` and ``<root>/<pack>``
    with root from :func:`insightface_root`; the registry pack ``buffalo_l`` is found exactly as
    :func:`lipsync_cli.weights.find` finds it (a loose ``det_10g.onnx`` in a weights folder too). Raises
    WeightsNotFound naming the places looked at (and ``lipsync weights download buffalo_l`` for that pack).
    """
    from lipsync_cli import weights as registry

    spec = DEFAULT_PACK if weights is None or str(weights) == "" else str(weights)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.suffix.lower() == ".onnx":
        raise WeightsNotFound(f"face detector weights not found: {path}", PACK_HINT)
    looked: list[str] = []
    dirs = [path] if path.is_dir() else []
    is_name = os.sep not in spec and "/" not in spec
    if is_name and spec in registry.REGISTRY:
        found = registry.find(spec)
        if found is not None:
            return found
        looked += [str(p) for p in registry.candidate_paths(spec)]
    if is_name:
        root = insightface_root()
        dirs += [d / spec for d in registry.weights_dirs()] + [root / "models" / spec, root / spec]
    for d in dict.fromkeys(dirs):
        found = sorted(d.glob("det_*.onnx")) if d.is_dir() else []
        if found:
            return found[0]
        looked.append(str(d / "det_*.onnx"))
    hint = (f"run `{registry.download_command([spec])}`, or {PACK_HINT}" if is_name and spec in registry.REGISTRY
            else PACK_HINT)
    raise WeightsNotFound(f"no insightface detector for {spec!r}: looked at {', '.join(looked) or spec}", hint)


CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
GPU_INSTALL = "pip install 'lipsync-cli[gpu]'"
# the CPU and GPU builds unpack into the same `onnxruntime` folder: whichever was installed last is the one loaded
GPU_REINSTALL = "pip install --force-reinstall --no-deps onnxruntime-gpu"
_warned: set[str] = set()  # each warning once per process (SCRFD, the restorer and ArcFace ask the same question)


def session_settings(device: str, threads: int | None = None):
    """The onnxruntime session options and providers every ONNX model of ours runs with (SCRFD, restorers):
    ``threads`` intra-op threads (default: the cores, at most 8), quiet logs, and :func:`providers_for`
    ``device``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or _default_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts, providers_for(device)


def providers_for(device: str, notify=None) -> list:
    """The onnxruntime execution providers for ``device``: on a CUDA device (``cuda``, ``cuda:N``) the CUDA
    provider first, on that GPU; the CPU provider always (last).

    A CUDA device whose onnxruntime has no CUDA provider (the CPU build, or the CPU build's files over the GPU
    build's) runs on the CPU with a warning saying how to install the GPU build: never silently. The warning
    goes to ``notify`` (default: this module's logger), once per process."""
    from lipsync_cli.device import device_type

    if device_type(device) != "cuda":
        return [CPU_PROVIDER]
    problem = cuda_provider_problem()
    if problem is not None:
        warn_once(problem, notify)
        return [CPU_PROVIDER]
    _preload_cuda_libraries()
    index = str(device).partition(":")[2]
    return [(CUDA_PROVIDER, {"device_id": int(index)}) if index else CUDA_PROVIDER, CPU_PROVIDER]


def cuda_provider_problem() -> str | None:
    """Why onnxruntime cannot run on a CUDA GPU here, with the command that fixes it; None when it can."""
    import onnxruntime as ort

    if CUDA_PROVIDER in ort.get_available_providers():
        return None
    installed = _installed("onnxruntime"), _installed("onnxruntime-gpu")
    lead = ("onnxruntime has no CUDA provider, so its models (SCRFD face detection, ArcFace, ONNX restorers) run on "
            "the CPU")
    if installed[1] is not None:
        return (f"{lead}: onnxruntime {installed[0] or '?'} (CPU) and onnxruntime-gpu {installed[1]} are both "
                f"installed, and the CPU build's files are the ones in the shared `onnxruntime` folder; "
                f"run `{GPU_REINSTALL}`")
    return f"{lead}: only the CPU build (onnxruntime {installed[0] or '?'}) is installed; run `{GPU_INSTALL}`"


def check_session_providers(session, providers: list, what: str, notify=None) -> None:
    """Warn when a session asked for the CUDA provider did not get it (onnxruntime then falls back to the CPU by
    itself: its CUDA provider could not start, e.g. CUDA or cuDNN libraries missing)."""
    wanted = any((p[0] if isinstance(p, tuple) else p) == CUDA_PROVIDER for p in providers)
    if wanted and CUDA_PROVIDER not in session.get_providers():
        warn_once(f"onnxruntime's CUDA provider could not start for {what} (CUDA or cuDNN libraries not found?), "
                  f"so it runs on the CPU; `{GPU_INSTALL}` installs the libraries onnxruntime-gpu needs", notify)


def warn_once(message: str, notify=None) -> None:
    """``message`` as a warning, through ``notify`` (a user-facing callback) or the log, once per process."""
    if message in _warned:
        return
    _warned.add(message)
    if notify is not None:
        notify(f"warning: {message}")
    else:
        log.warning("%s", message)


def _installed(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _preload_cuda_libraries() -> None:
    """Load the CUDA/cuDNN libraries of the nvidia wheels (``onnxruntime-gpu[cuda,cudnn]``, torch's) so the CUDA
    provider finds them; a no-op where this onnxruntime has no ``preload_dlls`` or torch already loaded them."""
    import contextlib
    import io

    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None or "preloaded" in _warned:
        return
    _warned.add("preloaded")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):  # it prints what it could not find: the session check says it
            preload()
    except Exception as err:  # noqa: BLE001 - best effort: the session check reports what did not load
        log.debug("onnxruntime.preload_dlls failed: %s", err)
    if out.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", out.getvalue().strip())


def _align_up(v: int) -> int:
    return max(SCRFD_ALIGN, -(-v // SCRFD_ALIGN) * SCRFD_ALIGN)


def _default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class SCRFDDetector:
    """FaceDetector backend for an SCRFD ONNX file (CPU or CUDA through onnxruntime's providers).

    det_size: px, side of the square input (``square=True``) or cap on the input's longest side (default).
    threads: onnxruntime intra-op threads (default: CPU count, at most 8).
    """

    name = "insightface"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", det_size: int = 640, *,
                 square: bool = False, threads: int | None = None,
                 score_threshold: float = SCRFD_SCORE_THRESHOLD, nms_threshold: float = SCRFD_NMS_THRESHOLD):
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        if det_size < SCRFD_ALIGN:
            raise BadOption(f"det_size must be >= {SCRFD_ALIGN} pixels, got {det_size}")
        self.path = Path(path)
        self.det_size = int(det_size)
        self.square = square
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        opts, providers = session_settings(device, threads)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.NoSuchFile,
                ort_errors.InvalidArgument, ort_errors.NotImplemented, RuntimeError, OSError) as err:
            first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise CheckpointError(f"cannot load ONNX face detector {self.path}: {first}",
                                  "the file is corrupt or not an ONNX model; " + PACK_HINT) from None
        check_session_providers(self.session, providers, "SCRFD face detection")
        self.input_name = self.session.get_inputs()[0].name
        n_out = len(self.session.get_outputs())
        layouts = {6: (3, False), 9: (3, True), 10: (5, False), 15: (5, True)}
        if n_out not in layouts:
            raise CheckpointMismatch(f"{self.path} is not an SCRFD face detector ({n_out} outputs, "
                                     "expected 6, 9, 10 or 15)",
                                     "pass the pack's det_*.onnx file, not a recognition model")
        self.fmc, self.use_kps = layouts[n_out]
        self.strides = (8, 16, 32) if self.fmc == 3 else (8, 16, 32, 64, 128)
        self.num_anchors = 2 if self.fmc == 3 else 1
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    def _input_size(self, h: int, w: int) -> tuple[int, int]:
        """Network input (height, width) and the resize factor for an h x w frame."""
        if self.square:
            return self.det_size, self.det_size
        scale = min(1.0, self.det_size / max(h, w))
        return _align_up(round(h * scale)), _align_up(round(w * scale))

    def _anchor_centres(self, h: int, w: int, stride: int) -> np.ndarray:
        key = (h, w, stride)
        if key not in self._centres:
            ys, xs = np.mgrid[:h, :w]
            c = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)  # (h*w, 2) x, y
            self._centres[key] = np.repeat(c, self.num_anchors, axis=0)  # (h*w*A, 2)
        return self._centres[key]

    def detect_one(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One BGR uint8 frame -> ((N, 5) [x1, y1, x2, y2, score] sorted by score, (N, 5, 2) keypoints or
        None), in the frame's pixels."""
        import cv2

        ih, iw = self._input_size(*frame.shape[:2])
        # letterbox: keep the aspect ratio, image at the top-left, zero padding (insightface's layout)
        if frame.shape[0] / frame.shape[1] > ih / iw:
            nh, nw = ih, int(ih / (frame.shape[0] / frame.shape[1]))
        else:
            nw, nh = iw, int(iw * (frame.shape[0] / frame.shape[1]))
        det_scale = nh / frame.shape[0]
        canvas = np.zeros((ih, iw, 3), dtype=np.uint8)
        canvas[:nh, :nw] = frame if (nh, nw) == frame.shape[:2] else cv2.resize(frame, (nw, nh))
        blob = (canvas[..., ::-1].astype(np.float32) - SCRFD_MEAN) / SCRFD_STD  # (ih, iw, 3) RGB
        blob = np.ascontiguousarray(blob.transpose(2, 0, 1)[None])  # (1, 3, ih, iw)
        outs = self.session.run(None, {self.input_name: blob})

        boxes, scores, kps = [], [], []
        for i, stride in enumerate(self.strides):
            score = outs[i].reshape(-1)  # (n,)
            pos = np.nonzero(score >= self.score_threshold)[0]
            if len(pos) == 0:
                continue
            centres = self._anchor_centres(ih // stride, iw // stride, stride)[pos]  # (p, 2)
            dist = outs[i + self.fmc].reshape(-1, 4)[pos] * stride  # (p, 4) left, top, right, bottom
            boxes.append(np.concatenate([centres - dist[:, :2], centres + dist[:, 2:]], axis=1))
            scores.append(score[pos])
            if self.use_kps:
                k = outs[i + 2 * self.fmc].reshape(-1, 10)[pos] * stride  # (p, 10)
                kps.append(k.reshape(-1, 5, 2) + centres[:, None, :])
        if not boxes:
            return np.zeros((0, 5), np.float32), (np.zeros((0, 5, 2), np.float32) if self.use_kps else None)
        dets = np.hstack([np.vstack(boxes) / det_scale, np.concatenate(scores)[:, None]]).astype(np.float32)
        order = np.argsort(-dets[:, 4], kind="stable")
        keep = order[nms(dets[order], self.nms_threshold)]
        landmarks = (np.vstack(kps) / det_scale).astype(np.float32)[keep] if self.use_kps else None
        return np.ascontiguousarray(dets[keep]), landmarks

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """BGR uint8 frames -> per frame (N, 5) [x1, y1, x2, y2, score], score-descending, in their pixels.
        The ONNX export has a fixed batch of 1, so frames run one after another."""
        return [self.detect_one(f)[0] for f in frames]
