"""Draw examples/face.png: a simple portrait for the README quick start (ours, no third-party media).

Run: uv run python examples/make_example_face.py
"""

from pathlib import Path

import cv2
import numpy as np


def draw_face(width: int = 480, height: int = 480) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = (235, 206, 170)  # light blue-grey background (BGR)
    cx, cy = width // 2, height // 2 + 10
    cv2.ellipse(img, (cx, cy + 150), (170, 90), 0, 180, 360, (90, 60, 40), -1)  # shoulders
    cv2.rectangle(img, (cx - 45, cy + 60), (cx + 45, cy + 130), (150, 180, 225), -1)  # neck
    cv2.ellipse(img, (cx, cy - 20), (115, 150), 0, 0, 360, (40, 50, 70), -1)  # hair
    cv2.ellipse(img, (cx, cy), (100, 130), 0, 0, 360, (160, 190, 235), -1)  # face
    for dx in (-42, 42):
        cv2.ellipse(img, (cx + dx, cy - 30), (22, 12), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(img, (cx + dx, cy - 30), 8, (60, 40, 20), -1)
        cv2.circle(img, (cx + dx, cy - 30), 3, (0, 0, 0), -1)
        cv2.ellipse(img, (cx + dx, cy - 55), (26, 8), 0, 180, 360, (40, 50, 70), 4)
    cv2.line(img, (cx, cy - 20), (cx - 8, cy + 25), (120, 150, 200), 3)
    cv2.line(img, (cx - 8, cy + 25), (cx + 8, cy + 25), (120, 150, 200), 3)
    cv2.ellipse(img, (cx, cy + 65), (34, 10), 0, 0, 360, (90, 90, 190), -1)  # mouth
    cv2.line(img, (cx - 34, cy + 65), (cx + 34, cy + 65), (50, 40, 120), 2)
    return cv2.GaussianBlur(img, (3, 3), 0)


if __name__ == "__main__":
    out = Path(__file__).with_name("face.png")
    cv2.imwrite(str(out), draw_face())
    print(f"wrote {out}")
