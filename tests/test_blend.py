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
