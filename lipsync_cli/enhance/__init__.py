"""``dub --enhance``: a face restorer on the dubbed face, blended back on the mouth only.

Per face: 5 facial points (with ``--detector insightface``: SCRFD's, smoothed over time in box coordinates,
:mod:`landmarks`; otherwise placed in the smoothed face box by the mean layout, :func:`align.box_points`, which
assumes an upright face), a similarity transform onto
the FFHQ template at the restorer's size, the aligned crop of the *dubbed* frame restored
(:mod:`restorers`), warped back, and blended in through the dub's own feathered lower-face mask
(``blend.mouth_mask``) times ``strength``. Pixels where that mask is 0 (everything outside the lower part of the
face box) are left exactly as the plain dub wrote them. With fixed noise (the default) the same input face gives
the same restored face, so the restorer adds no flicker of its own; the points move only as the smoothed box does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lipsync_cli.constants import ENHANCE_NOISE as NOISE_MODES
from lipsync_cli.enhance import align
from lipsync_cli.enhance.restorers import Restorer, load_restorer

__all__ = ["Enhancer", "load_restorer", "NOISE_MODES", "ENHANCE_BATCH_CPU", "ENHANCE_BATCH_GPU"]

ENHANCE_BATCH_CPU = 2  # faces per restorer pass: a 512x512 GFPGAN pass holds ~0.4 GB of activations
ENHANCE_BATCH_GPU = 16


class Enhancer:
    """Restore the mouths of dubbed frames in place. ``strength`` 0..1 scales the blend weight."""

    def __init__(self, restorer: Restorer, strength: float = 1.0, points=None):
        self.restorer = restorer
        self.strength = float(strength)
        # points(frame, box) -> (5, 2): the facial points (landmarks.ScrfdPoints); default: from the box alone
        self.points = points

    def transform(self, frame: np.ndarray, box: Sequence[int]) -> np.ndarray:
        """frame -> aligned-crop transform (2, 3) for the face in ``box``."""
        pts = self.points(frame, box) if self.points is not None else align.box_points(box)
        return align.similarity(pts, align.template(self.restorer.size))

    def apply(self, frames: Sequence[np.ndarray], boxes: Sequence[Sequence[int]]) -> None:
        """Enhance the mouth in ``boxes[k]`` of ``frames[k]`` (BGR uint8, in place), all restored as one batch."""
        from lipsync_cli.blend import mouth_mask

        if not frames or self.strength <= 0:
            return
        size = self.restorer.size
        mats = [self.transform(f, b) for f, b in zip(frames, boxes)]
        crops = np.stack([align.warp_face(f, m, size) for f, m in zip(frames, mats)])  # (B, S, S, 3)
        restored = self.restorer.restore(crops)  # (B, S, S, 3) uint8
        for frame, box, m, face in zip(frames, boxes, mats, restored):
            x1, y1, x2, y2 = (int(v) for v in box)
            pixels, coverage = align.unwarp_face(face, m, (x1, y1, x2, y2))
            weight = mouth_mask(x2 - x1, y2 - y1) * (coverage[:, :, None] * np.float32(self.strength))
            roi = frame[y1:y2, x1:x2]
            mixed = roi.astype(np.float32) * (1.0 - weight) + pixels * weight + 0.5
            np.copyto(roi, mixed.astype(np.uint8), where=weight > 0)
