"""SCRFD's 5 facial points for ``dub --enhance --detector insightface``, smoothed over time.

The face track carries boxes only, so the points are found again in the enhance stage: SCRFD runs on the dubbed
face's neighbourhood (a square of ``context`` times the box, shrunk to ``side`` px: a few ms per face), and the
detection that overlaps the box most gives its keypoints. They are kept in the box's own coordinates (fractions
of its width and height) and smoothed there with an exponential moving average, so the points follow the smoothed
box at once (no lag when the head moves) while their layout (roll, turn) changes smoothly and detector jitter is
averaged out. A box that jumps (a shot cut, another face: IoU < ``reset_iou`` with the previous one) restarts the
average; a face SCRFD misses keeps the last layout (or the mean layout, :data:`align.BOX_LAYOUT`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from lipsync_cli.enhance.align import BOX_LAYOUT
from lipsync_cli.faces.boxes import box_iou


class ScrfdPoints:
    """``points(frame, box) -> (5, 2)`` px; stateful (the moving average), one instance per dub."""

    def __init__(self, detector, alpha: float = 0.35, context: float = 1.6, side: int = 192,
                 reset_iou: float = 0.3):
        self.detector = detector  # faces.scrfd.SCRFDDetector (detect_one gives keypoints)
        self.alpha = alpha
        self.context = context
        self.side = side
        self.reset_iou = reset_iou
        self._layout: np.ndarray | None = None  # (5, 2) fractions of the box
        self._box: np.ndarray | None = None
        self.found = 0  # faces whose points came from SCRFD (the rest: the previous / mean layout)

    def _detect(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """SCRFD's keypoints of the face in ``box``, frame px, or None."""
        h, w = frame.shape[:2]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = self.context * max(box[2] - box[0], box[3] - box[1]) / 2
        x1, y1 = int(max(0, cx - half)), int(max(0, cy - half))
        x2, y2 = int(min(w, cx + half)), int(min(h, cy + half))
        if x2 - x1 < 8 or y2 - y1 < 8:
            return None
        scale = min(1.0, self.side / max(x2 - x1, y2 - y1))
        sub = frame[y1:y2, x1:x2]
        if scale < 1:
            sub = cv2.resize(sub, (max(1, round(sub.shape[1] * scale)), max(1, round(sub.shape[0] * scale))),
                             interpolation=cv2.INTER_AREA)
        dets, kps = self.detector.detect_one(np.ascontiguousarray(sub))
        if kps is None or len(dets) == 0:
            return None
        boxes = dets[:, :4] / scale + np.array([x1, y1, x1, y1], np.float32)
        ious = box_iou(boxes, box[None])[:, 0]  # (N,)
        best = int(np.argmax(ious))
        if ious[best] < self.reset_iou:
            return None
        return kps[best].astype(np.float64) / scale + np.array([x1, y1])

    def __call__(self, frame: np.ndarray, box: Sequence[float]) -> np.ndarray:
        b = np.asarray(box, np.float64)
        size = np.array([b[2] - b[0], b[3] - b[1]])
        if self._box is not None and float(box_iou(self._box, b)[0, 0]) < self.reset_iou:
            self._layout = None  # a cut or another face: start again
        self._box = b
        pts = self._detect(frame, b)
        if pts is not None:
            self.found += 1
            rel = (pts - b[:2]) / size
            self._layout = rel if self._layout is None else self._layout + self.alpha * (rel - self._layout)
        layout = self._layout if self._layout is not None else BOX_LAYOUT
        return b[:2] + layout * size
