"""`lipsync detect --preview`: every label is drawn whole inside the frame and none covers another (a face at
the top-right corner, two faces side by side). The preview's video input and output are replaced by a white
frame and a list, so the pixels are exactly what was drawn."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from lipsync_cli.faces.track import Track

W, H = 320, 120
FACES = np.array([[250, 0, 318, 60, 0.9],  # at the top-right corner
                  [40, 50, 100, 110, 0.9],  # two faces side by side
                  [60, 55, 120, 115, 0.9]], np.float32)
SPEAKING = np.array([2.4, -1.0, 0.5], np.float32)
DISTANCES = np.array([[0.21], [0.8], [0.35]], np.float32)  # the labels: "#0 d 0.21 s 2.4" ...


def _ink(img: np.ndarray) -> np.ndarray:
    """The black outline of the labels (the boxes and the text itself are drawn in colours)."""
    return img.max(axis=2) < 60


def _preview(monkeypatch, faces: np.ndarray, width: int, height: int) -> np.ndarray:
    """The one frame ``write_preview`` draws for ``faces`` on a white ``width`` x ``height`` frame."""
    from lipsync_cli.faces.preview import write_preview
    from lipsync_cli.media import decode, encode, probe

    frames = []

    class Reader:
        def __init__(self, *args, **kwargs):
            self.width, self.height = width, height

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            return iter([np.full((height, width, 3), 255, np.uint8)])

    class Writer(Reader):
        def write(self, frame):
            frames.append(frame.copy())

    monkeypatch.setattr(decode, "FrameReader", Reader)
    monkeypatch.setattr(encode, "VideoWriter", Writer)
    monkeypatch.setattr(probe, "probe", lambda path: SimpleNamespace(is_image=False, has_audio=False))
    track = Track(width, height, 25.0, [faces], speaking=[SPEAKING])
    assert write_preview("in.mp4", track, "out.mp4", DISTANCES) == 1
    return frames[0]


def test_preview_labels_are_whole_and_apart(monkeypatch):
    """The labels at the frame's edge and of close faces have every pixel they have when drawn far apart in a
    large frame: none is cut off by the frame or covered by another."""
    drawn = int(_ink(_preview(monkeypatch, FACES, W, H)).sum())
    spread = FACES.copy()
    spread[:, [0, 2]] += 100 + 300 * np.arange(3)[:, None]
    spread[:, [1, 3]] += 100
    alone = int(_ink(_preview(monkeypatch, spread, 1100, 300)).sum())
    # a label over a box line may gain a few outline pixels where its anti-aliased edge meets the colour
    assert 0.99 * alone <= drawn <= 1.03 * alone, (drawn, alone)


def test_label_rectangles_are_inside_disjoint_and_hold_all_the_ink():
    from lipsync_cli.faces.preview import draw_faces, preview_labels

    track = Track(W, H, 25.0, [FACES], speaking=[SPEAKING])
    labels = preview_labels(track, DISTANCES)[0]
    assert [t for t, _, _ in labels] == [0, 1, 2] and all(" d " in s and " s " in s for _, s, _ in labels)
    frame = np.full((H, W, 3), 255, np.uint8)
    rects = draw_faces(frame, FACES, labels)
    assert len(rects) == 3
    for x1, y1, x2, y2 in rects:
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    inside = np.zeros((H, W), bool)
    for x1, y1, x2, y2 in rects:
        inside[y1:y2, x1:x2] = True
    ink = _ink(frame)
    assert ink.sum() > 1000 and not (ink & ~inside).any()
    assert rects[0][1] == 0 and rects[0][2] == W  # the corner face's label: moved left and kept below the top
