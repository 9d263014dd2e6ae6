"""Box geometry shared by the detectors and the tracker: IoU, non-maximum suppression, detection sizes.

The one home of these questions: the detectors' NMS, the tracker's frame-to-frame linking, ``--detect-every``'s
interpolation and ``eval lse``'s face tracks all call here. Boxes are ``[x1, y1, x2, y2]`` in pixels (x right,
y down), computed in float64 so that the wild boxes of an untrained network cannot overflow.

numpy only, on purpose: ``torchvision.ops`` has the same two functions, but importing it costs seconds of start-up
on a CPU, and the tracker and the onnxruntime detector need no torch at all. :func:`nms` matches
``torchvision.ops.nms`` on boxes widened by one pixel (``tests/test_detect.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _boxes(boxes) -> np.ndarray:
    """(N, C) float64 array of N boxes (one box may be given as a flat sequence; C >= 4)."""
    arr = np.asarray(boxes, dtype=np.float64)
    return np.zeros((0, 4)) if arr.size == 0 else np.atleast_2d(arr)


def box_iou(a: np.ndarray | Sequence, b: np.ndarray | Sequence, *, plus_one: bool = False) -> np.ndarray:
    """(N, M) intersection over union of the boxes ``a`` (N, >=4) and ``b`` (M, >=4); extra columns (a score)
    are ignored. ``plus_one``: the "+1 pixel" convention of Wav2Lip's and insightface's NMS (a box from x1 to x2
    covers x2 - x1 + 1 pixels). Empty or inverted boxes overlap nothing (IoU 0, never NaN)."""
    a, b = _boxes(a)[:, :4], _boxes(b)[:, :4]
    one = 1.0 if plus_one else 0.0

    def area(x: np.ndarray) -> np.ndarray:
        return np.maximum(0.0, x[:, 2] - x[:, 0] + one) * np.maximum(0.0, x[:, 3] - x[:, 1] + one)

    w = np.maximum(0.0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + one)
    h = np.maximum(0.0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + one)
    inter = w * h  # (N, M)
    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(dets: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression of (N, 5) rows ``[x1, y1, x2, y2, score]``; returns the kept row indices
    in descending score order (ties keep input order). Uses the "+1 pixel" area convention of Wav2Lip and
    insightface (a box from x1 to x2 covers x2 - x1 + 1 pixels); a box is dropped when its IoU with a kept box
    is > threshold."""
    if len(dets) == 0:
        return np.zeros(0, dtype=np.int64)
    dets = _boxes(dets)
    order = np.argsort(-dets[:, 4], kind="stable")
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(i)
        order = rest[box_iou(dets[i], dets[rest], plus_one=True)[0] <= threshold]
    return np.asarray(keep, dtype=np.int64)


def centre_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Pixels between the centres of two boxes."""
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2))


def box_area(b: Sequence[float]) -> float:
    """Pixels covered by a box (0 for an empty or inverted one)."""
    return max(0.0, float(b[2]) - float(b[0])) * max(0.0, float(b[3]) - float(b[1]))


def detection_size(height: int, width: int, det_size: int) -> tuple[int, int]:
    """(height, width) a frame is shrunk to before detection: longest side ``det_size`` px, never enlarged."""
    scale = det_size / max(height, width)
    if scale >= 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))
