"""Five facial points, the similarity transform onto the FFHQ template, and the warps both ways.

Face restorers (GFPGAN, CodeFormer, GPEN, RestoreFormer++) are trained on FFHQ-aligned crops: the face rotated,
scaled and shifted so its eyes, nose tip and mouth corners fall on fixed template points. :func:`similarity` fits
that transform (least squares over the 5 points, no shear, no reflection); :func:`warp_face` cuts the aligned crop
out of a frame; :func:`unwarp_face` puts a crop back into a region of the frame.

Points: ``(5, 2)`` float x, y in frame pixels, in the order left eye, right eye, nose tip, left mouth corner, right
mouth corner (left/right as seen in the image), SCRFD's order. :func:`box_points` places them inside a face box by
the mean layout measured with SCRFD on the clips of ``../shared/testmedia`` (upright, frontal faces): a box that is
smoothed over time gives points that are smoothed the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

TEMPLATE_SIZE = 512
# FFHQ 512 template (eyes, nose, mouth corners), px in the 512x512 crop: what GFPGANer / facexlib align to
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.19366], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)
# where SCRFD puts the 5 points in its face box, as fractions of the box (x from the left, y from the top): the
# mean over 25 frontal frames of ../shared/testmedia, made left-right symmetric about the nose
BOX_LAYOUT = np.array([[0.28, 0.39], [0.74, 0.39], [0.51, 0.575], [0.32, 0.745], [0.70, 0.745]], dtype=np.float64)


def template(size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The FFHQ template for a ``size`` x ``size`` crop, (5, 2) px."""
    return FFHQ_TEMPLATE_512 * (size / TEMPLATE_SIZE)


def box_points(box: Sequence[float]) -> np.ndarray:
    """The 5 points of an upright frontal face inside ``box`` (x1, y1, x2, y2), (5, 2) px."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([x1, y1]) + BOX_LAYOUT * np.array([x2 - x1, y2 - y1])


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The similarity transform (rotation, uniform scale, translation) that maps ``src`` points onto ``dst`` in
    the least-squares sense: (2, 3) float64 ``[[a, -b, tx], [b, a, ty]]``. Exact when ``dst`` is a similarity
    image of ``src``. src, dst: (N, 2), N >= 2."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    # minimise sum |R s_i - d_i|^2 over R = [[a, -b], [b, a]]: a = sum(s.d) / |s|^2, b = sum(s x d) / |s|^2
    norm = float((s ** 2).sum())
    if norm <= 0:
        raise ValueError("the source points coincide: no transform")
    a = float((s * d).sum()) / norm
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / norm
    rot = np.array([[a, -b], [b, a]])
    t = md - rot @ ms
    return np.hstack([rot, t[:, None]])


def invert(m: np.ndarray) -> np.ndarray:
    """The inverse of a (2, 3) affine transform."""
    return cv2.invertAffineTransform(np.asarray(m, np.float64))


def warp_face(frame: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` crop that ``m`` (frame -> crop) cuts out of ``frame``; bilinear, edges replicated.
    (size, size, C) of ``frame``'s dtype."""
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def unwarp_face(crop: np.ndarray, m: np.ndarray, region: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``crop`` (made with ``m``: frame -> crop) mapped back onto ``region`` (x1, y1, x2, y2) of the frame.

    Returns (pixels (h, w, C) float32, coverage (h, w) float32): coverage is 1 where the crop covers the frame
    pixel and falls to 0 across its edge, so pixels the crop does not cover get no weight."""
    x1, y1, x2, y2 = (int(v) for v in region)
    w, h = x2 - x1, y2 - y1
    back = invert(m)  # crop -> frame
    back[:, 2] -= (x1, y1)  # ... -> region
    pixels = cv2.warpAffine(crop.astype(np.float32), back, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    ones = np.ones(crop.shape[:2], np.float32)
    coverage = cv2.warpAffine(ones, back, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
    return pixels.reshape(h, w, -1), coverage
