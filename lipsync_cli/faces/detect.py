"""The face-detector interface, the factory, and the wrapper that makes any backend cheap on large frames.

Every backend answers ``detect(frames) -> boxes``; :func:`load_detector` wraps it in :class:`ScaledDetector`,
which shrinks frames so their longest side is ``det_size`` (never enlarging them), feeds the backend
``batch_size`` frames at a time and maps the boxes back to the input frames' pixels. Faces do not need 1080p
to be found, and S3FD on a full-HD frame costs ~10x what it costs at 640 px.

This module imports only numpy; the backends (torch, onnxruntime, cv2) load when a detector is built. Box
geometry (NMS, IoU, detection sizes) lives in :mod:`lipsync_cli.faces.boxes`, which the backends import: they never
import this module.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from lipsync_cli.errors import BadOption, WeightsNotFound
from lipsync_cli.faces.boxes import detection_size

log = logging.getLogger(__name__)

DETECTOR_NAMES = ("s3fd", "insightface")
# the default of `lipsync dub` and `lipsync prepare` alike: a generator is trained on crops from the detector
# its dubs will use
DEFAULT_DETECTOR = "s3fd"
DET_SIZE_CPU, DET_SIZE_GPU = 320, 640  # px: S3FD costs ~4x less at 320, where a 720p talking head is 50+ px wide


def default_det_size(device: str) -> int:
    """The longest side (px) frames are shrunk to for detection when none is given: 640 on a GPU, 320 on a CPU."""
    return DET_SIZE_CPU if str(device) == "cpu" else DET_SIZE_GPU
DETECTOR_ALIASES = {"sfd": "s3fd", "scrfd": "insightface"}
DEFAULT_DETECTOR = "s3fd"  # what Wav2Lip uses; "insightface" is faster and finds profile faces better
DEFAULT_DET_SIZE = 640  # px: frames are shrunk so their longest side is at most this before detection
MIN_DET_SIZE = 32  # px: the coarsest stride of either backend's input
DEFAULT_DETECT_BATCH = 8  # frames per backend call
DEFAULT_MAX_CANDIDATES = 750  # S3FD: candidates per frame that enter NMS (best scores first)


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces.

    ``detect(frames)``: ``frames`` are BGR uint8 arrays (H, W, 3), all the same size; returns, per frame, an
    (N, 5) float32 array ``[x1, y1, x2, y2, score]`` in the input frames' pixel coordinates (x right, y down;
    sorted by score descending; (0, 5) when the frame has no face. Backends may return any numbers: the boxes
    that leave :class:`ScaledDetector` are clipped to the frame and usable (see :func:`usable_boxes`).
    """

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]: ...


def _check_frames(frames: list[np.ndarray]) -> tuple[int, int]:
    shape = frames[0].shape
    for f in frames:
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise BadOption(f"face detection needs BGR uint8 (H, W, 3) frames, got "
                            f"{getattr(f, 'dtype', type(f).__name__)} {getattr(f, 'shape', '')}")
        if f.shape != shape:
            raise BadOption(f"frames given to one detect() call must share a size: {f.shape} vs {shape}")
    return shape[0], shape[1]


def usable_boxes(dets: np.ndarray, width: int, height: int) -> np.ndarray:
    """The boxes of ``dets`` (N, 5) a face can be cut from: finite, clipped to the ``width`` x ``height`` frame,
    at least 1 px wide and high after clipping; the rest are dropped (a detector's degenerate output is a missing
    face, never a box of 1e27 px). Row order (score descending) is kept. The one place boxes are checked."""
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
    finite = np.isfinite(dets).all(axis=1)
    d = dets[finite]
    d[:, [0, 2]] = np.clip(d[:, [0, 2]], 0.0, float(width))
    d[:, [1, 3]] = np.clip(d[:, [1, 3]], 0.0, float(height))
    keep = ((d[:, 2] - d[:, 0]) >= 1.0) & ((d[:, 3] - d[:, 1]) >= 1.0)
    return np.ascontiguousarray(d[keep], dtype=np.float32)


class ScaledDetector:
    """A FaceDetector that shrinks frames to ``det_size`` (longest side, px; never enlarges), runs ``backend``
    on ``batch_size`` frames at a time, and returns boxes in the original frames' pixels, clipped to the frame
    (:func:`usable_boxes`)."""

    def __init__(self, backend, det_size: int = DEFAULT_DET_SIZE, batch_size: int = DEFAULT_DETECT_BATCH):
        if det_size < MIN_DET_SIZE:
            raise BadOption(f"detection size must be >= {MIN_DET_SIZE} px, got {det_size}")
        if batch_size < 1:
            raise BadOption(f"detection batch size must be >= 1, got {batch_size}")
        self.backend = backend
        self.name = getattr(backend, "name", type(backend).__name__)
        self.det_size = int(det_size)
        self.batch_size = int(batch_size)

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        if len(frames) == 0:
            return []
        import cv2

        h, w = _check_frames(frames)
        dh, dw = detection_size(h, w, self.det_size)
        # continuous-coordinate factors back to the input frame (x then y)
        back = np.array([w / dw, h / dh, w / dw, h / dh, 1.0], dtype=np.float32)
        results: list[np.ndarray] = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start:start + self.batch_size]
            if (dh, dw) != (h, w):
                chunk = [cv2.resize(f, (dw, dh), interpolation=cv2.INTER_AREA) for f in chunk]
            for dets in self.backend.detect(chunk):
                dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5) * back
                results.append(usable_boxes(dets, w, h))
        return results


def load_detector(name: str, weights: str | os.PathLike | None = None, device: str = "cpu",
                  det_size: int = DEFAULT_DET_SIZE, batch_size: int = DEFAULT_DETECT_BATCH, *,
                  threads: int | None = None, max_candidates: int = DEFAULT_MAX_CANDIDATES,
                  square: bool = False) -> ScaledDetector:
    """Build a face detector by name.

    name: ``"s3fd"`` (alias ``"sfd"``) or ``"insightface"`` (alias ``"scrfd"``).
    weights: s3fd: path of a file in the released ``s3fd.pth`` layout (default: the registry's ``s3fd`` file
        where ``lipsync weights list`` finds it, else WeightsNotFound naming the download). insightface: an SCRFD
        ``.onnx`` file, a pack directory, or a pack name (default ``buffalo_l``:
        ``~/.insightface/models/buffalo_l/det_*.onnx`` or under ``$INSIGHTFACE_HOME``).
    device: torch device for S3FD (``cpu``, ``cuda``, ``cuda:1``, ``mps``); for insightface ``cuda*`` selects
        onnxruntime's CUDA provider when it is installed, else CPU.
    det_size: frames are shrunk so their longest side is at most this many pixels before detection.
    batch_size: frames per network call (S3FD runs them as one batch).
    threads: onnxruntime threads for insightface (default: CPU count, at most 8).
    max_candidates: S3FD candidates per frame that enter NMS (best scores first).
    square: insightface only: letterbox into a det_size square exactly like insightface's ``SCRFD.detect``.

    Raises BadOption (unknown name / bad sizes), WeightsNotFound, CheckpointError, CheckpointMismatch.
    """
    key = DETECTOR_ALIASES.get(name.lower(), name.lower())
    if key not in DETECTOR_NAMES:
        raise BadOption(f"unknown face detector {name!r}", f"choose one of: {', '.join(DETECTOR_NAMES)}")
    if det_size < MIN_DET_SIZE:
        raise BadOption(f"detection size must be >= {MIN_DET_SIZE} px, got {det_size}")
    if key == "s3fd":
        from lipsync_cli.faces.s3fd import S3FDDetector, S3FDOptions

        if weights is None:  # the registry file, wherever `lipsync weights list` finds it; never downloaded here
            from lipsync_cli import weights as registry

            weights = registry.resolve("s3fd", None, download=False)
        if not Path(weights).expanduser().is_file():
            raise WeightsNotFound(f"s3fd weights not found: {weights}",
                                  "fetch them with `lipsync weights download s3fd` or pass the right path")
        _check_torch_device(device)
        options = S3FDOptions(max_candidates=max_candidates)
        backend = S3FDDetector.from_file(Path(weights).expanduser(), device, options)
    else:
        from lipsync_cli.faces.scrfd import SCRFDDetector, resolve_weights

        backend = SCRFDDetector(resolve_weights(weights), device, det_size, square=square, threads=threads)
    log.debug("face detector %s on %s, det_size %d, batch %d", key, device, det_size, batch_size)
    return ScaledDetector(backend, det_size, batch_size)


def _check_torch_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise BadOption(f"unknown device {device!r}", "use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadOption(f"device {device!r} requested but CUDA is not available", "use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BadOption(f"device {device!r} requested but MPS is not available", "use --device cpu")
