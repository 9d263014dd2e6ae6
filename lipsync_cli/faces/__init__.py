"""Face detection (S3FD, insightface SCRFD) and tracking.

``load_detector(name, weights, device, det_size, batch_size)`` returns a :class:`FaceDetector`:
``detect(frames) -> [(N, 5) float32 [x1, y1, x2, y2, score], ...]`` in the frames' pixels, best face first.
"""

from lipsync_cli.faces.boxes import box_iou, nms
from lipsync_cli.faces.detect import (
    DEFAULT_DET_SIZE,
    DEFAULT_DETECT_BATCH,
    DEFAULT_DETECTOR,
    DETECTOR_NAMES,
    FaceDetector,
    ScaledDetector,
    load_detector,
)

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_DETECT_BATCH",
    "DEFAULT_DET_SIZE",
    "DETECTOR_NAMES",
    "FaceDetector",
    "ScaledDetector",
    "box_iou",
    "load_detector",
    "nms",
]
