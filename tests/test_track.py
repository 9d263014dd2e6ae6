"""Face selection, smoothing, padding and track files (pure functions, no media)."""

import numpy as np
import pytest

from lipsync_cli.errors import BadOption, InputNotFound
from lipsync_cli.faces.track import (
    Track,
    TrackOptions,
    check_box,
    face_boxes,
    follow_face,
    pad_box,
    select_faces,
    smooth_boxes,
)


def upstream_smooth(boxes: np.ndarray, T: int = 5) -> np.ndarray:
    """Wav2Lip's inference.get_smoothened_boxes, transcribed to check our reading of the reference data."""
    boxes = boxes.astype(np.float64).copy()
    for i in range(len(boxes)):
        window = boxes[len(boxes) - T:] if i + T > len(boxes) else boxes[i:i + T]
        boxes[i] = np.mean(window, axis=0)
    return boxes.astype(int)


def test_upstream_smoothing_reference_and_ours_has_no_lag(compat_dir):
    ref = np.load(compat_dir / "s3fd_ref.npz")
    np.testing.assert_array_equal(upstream_smooth(ref["smooth_boxes_in"]), ref["smooth_boxes_out"])
    # a face moving 4 px per frame: the centred window is exact inside the run, upstream's lags 2 frames ahead
    moving = [np.array([10.0 + 4 * i, 20, 60 + 4 * i, 80]) for i in range(12)]
    ours = smooth_boxes(moving, 5)
    for i in range(2, 10):
        np.testing.assert_allclose(ours[i], moving[i])
    theirs = upstream_smooth(np.stack(moving))
    assert theirs[3][0] == moving[5][0]  # upstream's box at frame 3 is where the face is at frame 5


def test_smooth_boxes_keeps_gaps_and_input():
    boxes = [np.array([0.0, 0, 10, 10]), np.array([10.0, 0, 20, 10]), None, np.array([100.0, 0, 110, 10])]
    before = [None if b is None else b.copy() for b in boxes]
    out = smooth_boxes(boxes, 3)
    assert out[2] is None
    np.testing.assert_allclose(out[3], boxes[3])  # not averaged across the gap
    np.testing.assert_allclose(out[0], boxes[0])  # window shrinks to 1 at a run's end
    for b, c in zip(boxes, before):
        assert (b is None and c is None) or np.array_equal(b, c)


def test_select_follows_face_and_ref_box():
    small = [100, 100, 140, 140, 0.9]
    big = [300, 100, 400, 200, 0.9]
    frames = [np.array([small, big])] * 3
    chosen = select_faces(frames)
    assert all(np.array_equal(c, big[:4]) for c in chosen)  # largest by default
    chosen = select_faces(frames, TrackOptions(ref_box=(90, 90, 150, 150)))
    assert all(np.array_equal(c, small[:4]) for c in chosen)
    # the speaker keeps the track when a larger face passes through briefly (size x persistence decides)
    a, passer = [100, 100, 200, 200, 0.9], [300, 0, 600, 300, 0.9]
    brief = [np.array([a])] * 8 + [np.array([a, passer])] * 2
    assert all(c[0] == 100 for c in select_faces(brief))
    # no detection -> None; low scores are ignored
    chosen = select_faces([np.zeros((0, 5)), np.array([[0, 0, 10, 10, 0.1]])])
    assert chosen == [None, None]


def test_pad_and_face_boxes_clip_to_frame():
    np.testing.assert_allclose(pad_box([5, 5, 95, 90], (0, 10, 0, 0), 100, 96), [5, 5, 95, 96])
    track = Track(100, 96, 25.0, [np.array([[5, 5, 95, 90, 0.99]], np.float32), np.zeros((0, 5), np.float32)])
    boxes = face_boxes(track, TrackOptions(smooth=False))
    assert boxes == [(5, 5, 95, 96), None]


def test_track_roundtrip_and_mismatch(tmp_path):
    track = Track(640, 360, 29.97, [np.array([[1.04, 2, 30, 40, 0.9]], np.float32), np.zeros((0, 5), np.float32)])
    p = tmp_path / "t.json"
    track.save(p)
    back = Track.load(p)
    assert (back.width, back.height, back.fps, len(back)) == (640, 360, 29.97, 2)
    np.testing.assert_allclose(back.faces[0], [[1.0, 2, 30, 40, 0.9]], atol=1e-6)
    assert back.faces[1].shape == (0, 5)
    with pytest.raises(BadOption, match="640x360"):
        back.check_matches(1280, 720, 2)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(BadOption, match="not a track file"):
        Track.load(tmp_path / "bad.json")
    with pytest.raises(InputNotFound):
        Track.load(tmp_path / "missing.json")


def test_check_box():
    assert check_box((1, 2, 30, 40), 64, 48) == (1, 2, 30, 40)
    with pytest.raises(BadOption, match="outside the 64x48 frame"):
        check_box((1, 2, 300, 40), 64, 48)


class StubDetector:
    """Faces given per frame index (frames are arrays filled with their index); counts the frames it sees."""

    def __init__(self, table):
        self.table = table
        self.seen: list[int] = []

    def detect(self, frames):
        idx = [int(f[0, 0, 0]) for f in frames]
        self.seen.extend(idx)
        return [np.array(self.table(i), np.float32).reshape(-1, 5) for i in idx]


def _frames(n):
    return (np.full((4, 4, 3), i, np.uint8) for i in range(n))


def test_detect_every_interpolates_moving_face():
    from lipsync_cli.faces.track import detect_faces

    def table(i):  # one face moving right 2 px per frame
        return [[10 + 2 * i, 10, 60 + 2 * i, 70, 0.9]]

    every_frame = detect_faces(_frames(40), StubDetector(table), batch_size=4)
    det = StubDetector(table)
    sparse = detect_faces(_frames(40), det, batch_size=4, every=4)
    assert len(sparse) == 40
    assert len(det.seen) <= 40 // 4 + 3  # about one frame in four was detected
    for a, b in zip(every_frame, sparse):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_detect_every_detects_frames_where_faces_change():
    from lipsync_cli.faces.track import detect_faces

    def table(i):  # a cut at frame 10: the face jumps; frames 20-26 have no face
        if 20 <= i <= 26:
            return []
        return [[10, 10, 50, 50, 0.9]] if i < 10 else [[200, 10, 240, 50, 0.9]]

    det = StubDetector(table)
    sparse = detect_faces(_frames(30), det, batch_size=2, every=4)
    truth = [np.array(table(i), np.float32).reshape(-1, 5) for i in range(30)]
    for i, (a, b) in enumerate(zip(truth, sparse)):
        np.testing.assert_allclose(a, b, atol=1e-4, err_msg=f"frame {i}")
    assert set(range(8, 12)) <= set(det.seen) and set(range(19, 28)) <= set(det.seen)
    # documented limit: a face hidden for fewer frames than `every`, between two matching detections, is
    # interpolated through
    short_gap = detect_faces(_frames(30), StubDetector(lambda i: [] if i == 21 else table(0)), batch_size=2, every=4)
    assert len(short_gap[21]) == 1


def test_cut_switches_face_at_once_and_smoothing_does_not_mix_faces():
    from lipsync_cli.faces.track import follow_face

    a, b = [10, 10, 60, 60, 0.9], [300, 10, 350, 60, 0.9]
    faces = [np.array([a])] * 6 + [np.array([b])] * 6  # a shot cut after frame 5
    boxes, ids = follow_face(faces)
    assert all(x is not None for x in boxes)  # the new face is taken at once, no frames lost
    assert ids[:6] == [ids[0]] * 6 and ids[6:] == [ids[6]] * 6 and ids[0] != ids[6]
    track = Track(400, 100, 25.0, faces)
    final = face_boxes(track, TrackOptions(pads=(0, 0, 0, 0), smooth_window=5))
    assert final[5] == (10, 10, 60, 60) and final[6] == (300, 10, 350, 60)  # no box between the two faces


# ---------------------------------------------------------------- the speaker across gaps and cuts

LEFT, RIGHT = [50, 50, 150, 170, 0.9], [400, 60, 490, 170, 0.9]  # the left face is the larger


def _hidden(face, gap: range, n: int = 30):
    """Both faces in every frame, except ``face`` in the frames of ``gap`` (a hand, a turn of the head)."""
    return [np.array([f for f in (LEFT, RIGHT) if not (i in gap and f is face)], np.float32) for i in range(n)]


@pytest.mark.parametrize(("followed", "ref_box"), [(LEFT, None), (RIGHT, (390, 50, 500, 180))])
def test_a_brief_miss_does_not_change_the_speaker(followed, ref_box):
    gap = range(12, 15)
    faces = _hidden(followed, gap)
    options = TrackOptions(ref_box=ref_box, pads=(0, 0, 0, 0))
    chosen = select_faces(faces, options)
    for i, box in enumerate(chosen):
        if i in gap:
            assert box is None, f"frame {i} of the gap was given the other face"
        else:
            np.testing.assert_array_equal(box, followed[:4], err_msg=f"frame {i}")
    final = face_boxes(Track(640, 360, 25.0, faces), options)
    assert [i for i, b in enumerate(final) if b is None] == list(gap)
    assert all(b == tuple(followed[:4]) for i, b in enumerate(final) if i not in gap)  # smoothing: static face


def test_a_gap_longer_than_max_gap_ends_the_track():
    faces = [np.zeros((0, 5))] * 10
    faces = [np.array([LEFT])] * 5 + faces + [np.array([LEFT])] * 5  # hidden for 10 frames
    boxes, ids = follow_face(faces, TrackOptions(max_gap=9))
    assert ids[0] != ids[19] and boxes[19] is not None  # two stretches: not smoothed as one
    boxes, ids = follow_face(faces, TrackOptions(max_gap=10))
    assert ids[0] == ids[19] and all(b is None for b in boxes[5:15])


def test_a_real_cut_rechooses_the_speaker():
    """Before the cut the left face is the larger, after it the right one; both moved little enough to be linked
    across the cut if it were not known: the cut is what makes the choice anew."""
    big_l, small_r = [50, 50, 250, 250, 0.9], [400, 50, 500, 150, 0.9]
    small_l, big_r = [80, 80, 220, 220, 0.9], [350, 0, 550, 200, 0.9]
    faces = [np.array([big_l, small_r])] * 10 + [np.array([small_l, big_r])] * 10
    boxes, ids = follow_face(faces, TrackOptions(), cuts=[10])
    assert all(b[0] == 50 for b in boxes[:10]) and all(b[0] == 350 for b in boxes[10:])
    assert len(set(ids[:10])) == len(set(ids[10:])) == 1 and ids[9] != ids[10]
    unknown, _ = follow_face(faces, TrackOptions())  # no cut known: one shot, the left face throughout
    assert all(b[0] in (50, 80) for b in unknown)
    # --ref-box: in each shot the face nearest it
    near_right = follow_face(faces, TrackOptions(ref_box=(400, 50, 500, 150)), cuts=[10])[0]
    assert all(b[0] == 400 for b in near_right[:10]) and all(b[0] == 350 for b in near_right[10:])
    track = Track(600, 300, 25.0, faces, cuts=[10])
    final = face_boxes(track, TrackOptions(pads=(0, 0, 0, 0), smooth_window=5))
    assert final[9] == (50, 50, 250, 250) and final[10] == (350, 0, 550, 200)  # no box between the two


def test_link_tracks_bridges_gaps_and_stops_at_cuts():
    from lipsync_cli.faces.track import link_tracks

    a = [10, 10, 50, 50, 0.9]
    faces = [np.array([a])] * 3 + [np.zeros((0, 5))] * 2 + [np.array([a])] * 3
    assert [t.frames for t in link_tracks(faces, max_gap=2)] == [[0, 1, 2, 5, 6, 7]]
    assert [t.frames for t in link_tracks(faces, max_gap=1)] == [[0, 1, 2], [5, 6, 7]]
    assert [t.frames for t in link_tracks(faces, cuts=[6])] == [[0, 1, 2, 5], [6, 7]]


# ---------------------------------------------------------------- track files


def test_track_file_keeps_cuts_and_reads_files_without_them(tmp_path):
    import json

    track = Track(64, 48, 25.0, [np.array([[1, 2, 30, 40, 0.9]], np.float32)] * 4, cuts=[2])
    track.save(tmp_path / "t.json")
    assert Track.load(tmp_path / "t.json").cuts == [2]
    data = json.loads((tmp_path / "t.json").read_text())
    del data["cuts"]
    data["version"] = 1  # as written before cuts were recorded
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = Track.load(tmp_path / "old.json")
    assert old.cuts is None and len(old) == 4
    assert face_boxes(old, TrackOptions(pads=(0, 0, 0, 0))) == [(1, 2, 30, 40)] * 4
    data["cuts"] = [7]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(BadOption, match="bad.json"):
        Track.load(tmp_path / "bad.json")


@pytest.mark.parametrize("row", [
    "[NaN, 2, 30, 40, 0.9]", "[1, 2, Infinity, 40, 0.9]", "[1, 2, 30, -Infinity, 0.9]", "[1, 2, 30, 40, NaN]",
    '["1", 2, 30, 40, 0.9]', "[1, null, 30, 40, 0.9]", "[1, 2, true, 40, 0.9]", "[1, 2, 30, 40]",
    "[1, 2, 30, 40, 0.9, 7]", "[1e300, 2, 30, 40, 0.9]", "{}",
])
def test_track_file_with_boxes_that_are_not_finite_numbers_is_a_user_error(tmp_path, row):
    path = tmp_path / "broken.json"
    path.write_text('{"format": "lipsync_cli.track", "version": 1, "width": 64, "height": 48, "fps": 25,'
                    f' "faces": [[[1, 2, 30, 40, 0.9]], [{row}]]}}')
    with pytest.raises(BadOption, match="broken.json") as err:
        Track.load(path)
    assert "frame 1" in str(err.value) and "\n" not in str(err.value)
