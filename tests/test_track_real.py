"""The speaker on real faces: a two-person clip made from ../shared/testmedia in which the followed face is hidden
(painted over) for a few frames, then a cut to another shot, run through the real SCRFD detector."""

from __future__ import annotations

import subprocess

import pytest

from lipsync_cli.faces.track import TrackOptions, face_boxes, track_video
from tests.conftest import media
from tests.synth import ffmpeg_exe

cv2 = pytest.importorskip("cv2")

FPS = 25
SIZE = (1126, 660)  # facerec_two_people.jpg, one row cropped for yuv420p
CUT = 25  # first frame of the second shot (Obama)
N_FRAMES = 40
# where the two faces of facerec_two_people.jpg are (SCRFD boxes, px) and the patch that hides each one
FACES = {"left": (236, 25, 389, 223), "right": (787, 42, 942, 251)}
PATCH = {"left": (210, 0, 415, 255), "right": (760, 15, 975, 285)}
OBAMA_CX = 586  # centre x of the face in facerec_obama-720p.jpg resized to SIZE


def make_clip(path, hidden: str, gap: range):
    """Frames 0..CUT-1: the two people, ``hidden``'s face painted grey in the frames of ``gap``; then Obama."""
    two = cv2.imread(str(media("facerec_two_people.jpg")))[: SIZE[1], : SIZE[0]]
    obama = cv2.resize(cv2.imread(str(media("facerec_obama-720p.jpg"))), SIZE, interpolation=cv2.INTER_AREA)
    args = [ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24",
            "-s", f"{SIZE[0]}x{SIZE[1]}", "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-preset", "ultrafast",
            "-crf", "18", "-pix_fmt", "yuv420p", str(path)]
    frames = []
    for i in range(N_FRAMES):
        frame = two.copy() if i < CUT else obama
        if i in gap:
            x1, y1, x2, y2 = PATCH[hidden]
            frame[y1:y2, x1:x2] = 128
        frames.append(frame)
    subprocess.run(args, input=b"".join(f.tobytes() for f in frames), check=True, capture_output=True)
    return path


def _centre_x(box) -> float:
    return (box[0] + box[2]) / 2


@pytest.mark.parametrize(("hidden", "gap", "ref_box", "every"), [
    ("right", range(10, 14), None, 1),  # the larger face (the default speaker) hidden for 4 frames
    ("left", range(10, 14), FACES["left"], 1),  # --ref-box on the left face, which is hidden
    # --detect-every 4: a face hidden for fewer frames than `every`, between two detections that show the same
    # faces, is interpolated through (the documented limit): the gap gets the same face's box, never the other
    ("right", range(9, 11), None, 4),
])
def test_the_speaker_stays_the_same_person_after_a_brief_miss(tmp_path, scrfd_onnx, hidden, gap, ref_box, every):
    from lipsync_cli.faces import load_detector

    clip = make_clip(tmp_path / "clip.mp4", hidden, gap)
    detector = load_detector("insightface", scrfd_onnx, det_size=320, threads=1)
    track = track_video(clip, detector, det_size=320, every=every)
    assert len(track) == N_FRAMES
    assert track.cuts == [CUT]  # found in the frames: the shot change, not the painted face
    if every == 1:
        for i in gap:  # the scenario is real: only the other face is detected in the gap
            assert len(track.faces[i]) == 1, i
    other = "left" if hidden == "right" else "right"
    boxes = face_boxes(track, TrackOptions(ref_box=ref_box))
    followed_cx, other_cx = _centre_x(FACES[hidden]), _centre_x(FACES[other])
    for i, box in enumerate(boxes[:CUT]):
        if box is None:
            assert i in gap and every == 1, f"frame {i}: no box outside the gap"
            continue
        assert abs(_centre_x(box) - followed_cx) < 40, f"frame {i} dubs the other person ({box})"
        assert abs(_centre_x(box) - other_cx) > 200
    if every == 1:
        assert all(boxes[i] is None for i in gap)  # passed through, never given the other face
    else:
        assert all(boxes[i] is not None for i in gap)  # interpolated through
    # after the cut the speaker is chosen anew: the one face of the new shot, from its first frame
    assert all(b is not None and abs(_centre_x(b) - OBAMA_CX) < 40 for b in boxes[CUT:])


def test_hamilton_shots_and_gaps(scrfd_onnx):
    """facerec_short_hamilton_clip.mp4 has cuts, 0-5 faces per shot, and faces that leave and come back: the cuts
    are found in the frames; a box is only ever given where a face was detected; a frame with faces but no box is
    inside a gap of the followed face (at most max_gap frames, between two frames of one stretch), never a frame
    where the speaker's track had ended; and no stretch crosses a cut."""
    from lipsync_cli.faces import load_detector
    from lipsync_cli.faces.track import follow_face

    clip = media("facerec_short_hamilton_clip.mp4")
    track = track_video(clip, load_detector("insightface", scrfd_onnx, det_size=320, threads=1), det_size=320,
                        every=4)
    assert len(track) == 275
    assert len(track.cuts) >= 2 and all(0 < c < 275 for c in track.cuts)
    options = TrackOptions()
    boxes = face_boxes(track, options)
    raw, segments = follow_face(track.faces, options, track.cuts)
    with_face = {i for i, f in enumerate(track.faces) if len(f)}
    assert {i for i, b in enumerate(boxes) if b is not None} <= with_face
    assert sum(b is not None for b in boxes) > 0.8 * len(with_face)
    for i in sorted(with_face):
        if boxes[i] is None:
            seg = segments[i]
            before = [j for j in range(i) if segments[j] == seg and raw[j] is not None]
            after = [j for j in range(i + 1, 275) if segments[j] == seg and raw[j] is not None]
            assert before and after, f"frame {i} has faces and lies outside every stretch"
            assert after[0] - before[-1] - 1 <= options.max_gap, f"frame {i}"
    starts = [0, *track.cuts, 275]
    for a, b in zip(starts, starts[1:]):
        assert not {s for s in segments[a:b] if s >= 0} & {s for s in segments[:a] + segments[b:] if s >= 0}
