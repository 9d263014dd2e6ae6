"""Putting the generated mouth back: the feather blend (the default) and Wav2Lip's paste."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_cli import blend


def _scene(seed: int = 0):
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)
    face = np.full((96, 96, 3), 17, np.uint8)  # a flat prediction: easy to recognise where it lands
    return frame, face


def test_feather_changes_only_the_lower_face_inside_the_box():
    frame, face = _scene()
    before = frame.copy()
    box = (40, 30, 200, 190)  # 160 x 160
    blend.blend(frame, face, box, "feather")
    x1, y1, x2, y2 = box
    changed = np.any(frame != before, axis=2)  # (H, W)
    outside = changed.copy()
    outside[y1:y2, x1:x2] = False
    assert not outside.any()  # not one pixel outside the box
    h = y2 - y1
    assert not changed[y1:y1 + int(0.3 * h), x1:x2].any()  # eyes and forehead untouched
    # the middle of the mouth region is the prediction itself; the edges fade (neither original nor prediction)
    centre = frame[y1 + int(0.7 * h), (x1 + x2) // 2]
    assert np.array_equal(centre, [17, 17, 17])
    # a soft seam: along a row through the mouth, the weight of the prediction rises gradually from the side
    row = y1 + int(0.7 * h)
    w_pred = []
    for x in range(x1, x1 + 30):
        o, p, got = before[row, x].astype(float), 17.0, frame[row, x].astype(float)
        denom = p - o
        ok = np.abs(denom) > 30
        if ok.any():
            w_pred.append(float(np.median((got[ok] - o[ok]) / denom[ok])))
    assert w_pred[0] < 0.35 and w_pred[-1] > 0.95
    assert len({round(w, 1) for w in w_pred}) >= 4  # several intermediate weights, not a hard edge


def test_paste_replaces_the_whole_box_and_nothing_else():
    frame, face = _scene(1)
    before = frame.copy()
    box = (10, 20, 106, 116)  # 96 x 96: no resize
    blend.blend(frame, face, box, "paste")
    assert np.all(frame[20:116, 10:106] == 17)
    mask = np.ones(frame.shape[:2], bool)
    mask[20:116, 10:106] = False
    assert np.array_equal(frame[mask], before[mask])


@pytest.mark.parametrize("mode", blend.BLEND_MODES)
def test_blend_handles_boxes_at_the_frame_edge(mode):
    frame, face = _scene(2)
    box = (0, 0, 31, 47)  # odd, small, touching the corner
    blend.blend(frame, face, box, mode)
    assert frame.shape == (200, 240, 3) and frame.dtype == np.uint8


def test_feather_never_reads_the_rows_above_first_row_read():
    # the generator skips those rows (Wav2Lip.forward_rows): garbage there must not change one output pixel
    rng = np.random.default_rng(3)
    sizes = [(w, h) for h in (8, 31, 64, 95, 96, 97, 150, 233, 400, 401, 720) for w in (9, 60, 300)]
    for w, h in sizes:
        box = (4, 6, 4 + w, 6 + h)
        r = blend.first_row_read(box)
        frame = rng.integers(0, 256, (h + 12, w + 9, 3), dtype=np.uint8)
        face = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        garbage = face.copy()
        garbage[:r] = 255 - face[:r]
        a, b = frame.copy(), frame.copy()
        blend.feather(a, face, box)
        blend.feather(b, garbage, box)
        assert np.array_equal(a, b), (w, h, r)
    # the saving is real on a face-sized box, and the rows just below it are read
    box = (600, 60, 900, 460)
    r = blend.first_row_read(box)
    assert 30 <= r <= 40
    face = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    below = face.copy()
    below[r:r + 4] = 255 - face[r:r + 4]
    frame = rng.integers(0, 256, (520, 1000, 3), dtype=np.uint8)
    a, b = frame.copy(), frame.copy()
    blend.feather(a, face, box)
    blend.feather(b, below, box)
    assert not np.array_equal(a, b)
    assert blend.first_row_read(box, "paste") == 0
