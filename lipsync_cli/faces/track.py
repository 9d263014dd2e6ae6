"""One face per frame: choosing the face, following it, smoothing its box, padding it, saving it.

A :class:`Track` holds every detection of every frame (so the choice of face can be redone when a track is reused)
plus nothing else; :func:`face_boxes` turns it into the final per-frame crop boxes the generator uses.
Frames without the chosen face get ``None`` and pass through the dub unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lipsync_cli.constants import DEFAULT_PADS
from lipsync_cli.errors import BadOption, InputNotFound

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels (x right, y down), x2/y2 exclusive

TRACK_FORMAT = "lipsync_cli.track"
TRACK_VERSION = 1


@dataclass(frozen=True)
class TrackOptions:
    """How detections become one box per frame.

    pads: pixels added (top, bottom, left, right) around the detected box, as Wav2Lip's ``--pads``; the default
        adds 10 px below so the chin is inside the crop.
    smooth: average each box coordinate over a centred window of ``smooth_window`` frames (see :func:`smooth_boxes`).
    ref_box: follow the face nearest this box (x1, y1, x2, y2) instead of the largest face.
    max_gap: frames a followed face may be missing (no face at all) and still be picked up again as the same face.
    """

    pads: tuple[int, int, int, int] = DEFAULT_PADS
    smooth: bool = True
    smooth_window: int = 5
    ref_box: tuple[float, float, float, float] | None = None
    max_gap: int = 25
    min_score: float = 0.5

    def __post_init__(self):
        if len(self.pads) != 4 or any(p < 0 for p in self.pads):
            raise BadOption(f"--pads must be four non-negative integers, got {self.pads}")
        if self.smooth_window < 1:
            raise BadOption(f"smoothing window must be >= 1 frame, got {self.smooth_window}")
        if self.ref_box is not None:
            x1, y1, x2, y2 = self.ref_box
            if x2 <= x1 or y2 <= y1:
                raise BadOption(f"reference box {self.ref_box} is empty: give X1 Y1 X2 Y2 with X2 > X1 and Y2 > Y1")


@dataclass
class Track:
    """Every detection of a video: ``faces[i]`` is an (N, 5) array [x1, y1, x2, y2, score] for frame i."""

    width: int
    height: int
    fps: float
    faces: list[np.ndarray] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.faces)

    def save(self, path: str | Path) -> None:
        """Write the track as JSON (boxes rounded to 0.1 px)."""
        data = {
            "format": TRACK_FORMAT,
            "version": TRACK_VERSION,
            "source": self.source,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "n_frames": len(self.faces),
            "faces": [[[round(float(v), 1) for v in row] for row in f] for f in self.faces],
        }
        from lipsync_cli.files import atomic_write

        atomic_write(path, json.dumps(data, separators=(",", ":")))

    @classmethod
    def load(cls, path: str | Path) -> Track:
        path = Path(path)
        if not path.is_file():
            raise InputNotFound(f"track file not found: {path}", "create one with `lipsync detect VIDEO -o track.json`")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != TRACK_FORMAT:
                raise ValueError("not a lipsync track")
            faces = [np.asarray(f, dtype=np.float32).reshape(-1, 5) for f in data["faces"]]
            return cls(int(data["width"]), int(data["height"]), float(data["fps"]), faces, data.get("source", ""))
        except (ValueError, KeyError, TypeError) as err:
            raise BadOption(f"{path} is not a track file written by `lipsync detect` ({err})") from None

    def check_matches(self, width: int, height: int, n_frames: int | None) -> None:
        """Refuse a track made for another video (different size, or far fewer frames)."""
        if (self.width, self.height) != (width, height):
            raise BadOption(
                f"the track was made for a {self.width}x{self.height} video, this one is {width}x{height}",
                "run `lipsync detect` on this video",
            )
        if n_frames is not None and abs(len(self.faces) - n_frames) > 1:
            raise BadOption(
                f"the track has {len(self.faces)} frames, the video {n_frames}", "run `lipsync detect` on this video"
            )


def _area(b: Sequence[float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _centre_dist(a: Sequence[float], b: Sequence[float]) -> float:
    return math.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)


def follow_face(faces: Sequence[np.ndarray], options: TrackOptions = TrackOptions()
                ) -> tuple[list[np.ndarray | None], list[int]]:
    """Follow one face through the frames: per frame its raw (4,) box or None, and a segment id per frame.

    The face is chosen where it first appears (the largest, or the one nearest ``options.ref_box``) and then
    followed: each frame takes the detection overlapping the previous box most, so another face growing larger
    does not steal the track. A detection counts as the same face when IoU > 0.2 or its centre moved less than
    the box's half size; a face missing for up to ``max_gap`` frames is picked up again where it was. When the
    followed face is gone but other faces are there (a shot cut, the speaker left), the choice is made anew at
    once and a new segment starts: smoothing never averages two different faces.
    """
    boxes: list[np.ndarray | None] = []
    ids: list[int] = []
    prev: np.ndarray | None = None
    missing, segment = 0, -1
    for dets in faces:
        dets = np.asarray(dets, dtype=np.float32).reshape(-1, 5)
        dets = dets[dets[:, 4] >= options.min_score] if len(dets) else dets
        chosen = None
        if len(dets) and prev is not None and missing <= options.max_gap:
            scores = [_iou(prev, d) for d in dets]
            best = int(np.argmax(scores))
            half = max(prev[2] - prev[0], prev[3] - prev[1]) / 2
            if scores[best] > 0.2 or _centre_dist(prev, dets[best]) < half:
                chosen = dets[best, :4]
        if chosen is None and len(dets):
            if options.ref_box is not None:
                chosen = dets[int(np.argmin([_centre_dist(options.ref_box, d) for d in dets])), :4]
            else:
                chosen = dets[int(np.argmax([_area(d) for d in dets])), :4]
            segment += 1
        if chosen is not None:
            prev, missing = chosen.copy(), 0
        else:
            missing += 1
        boxes.append(None if chosen is None else chosen.copy())
        ids.append(segment)
    return boxes, ids


def select_faces(faces: Sequence[np.ndarray], options: TrackOptions = TrackOptions()) -> list[np.ndarray | None]:
    """The boxes of :func:`follow_face`: per frame the followed face's raw (4,) box, or None."""
    return follow_face(faces, options)[0]


def pad_box(box: Sequence[float], pads: Sequence[int], width: int, height: int) -> np.ndarray:
    """Add (top, bottom, left, right) pixels around ``box`` and clip to the frame, as Wav2Lip does."""
    top, bottom, left, right = pads
    return np.array([max(0.0, box[0] - left), max(0.0, box[1] - top),
                     min(float(width), box[2] + right), min(float(height), box[3] + bottom)], dtype=np.float64)


def smooth_boxes(boxes: Sequence[np.ndarray | None], window: int,
                 segments: Sequence[int] | None = None) -> list[np.ndarray | None]:
    """Average each coordinate over a centred window of ``window`` frames; returns new arrays, input untouched.

    Runs of consecutive frames with a box (and the same ``segments`` id, when given) are smoothed independently:
    a gap or a change of face is never averaged across, and the window shrinks symmetrically at a run's ends.
    Wav2Lip instead averages the *next* ``window`` boxes (a forward window, clamped at the end:
    ``../shared/compat/s3fd_ref.npz`` smooth_boxes_*), which puts the box where the face will be two frames later;
    a centred window has no lag.
    """
    out: list[np.ndarray | None] = [None if b is None else np.asarray(b, dtype=np.float64).copy() for b in boxes]
    if window <= 1:
        return out
    seg = list(segments) if segments is not None else [0] * len(boxes)
    half = window // 2
    i, n = 0, len(boxes)
    while i < n:
        if boxes[i] is None:
            i += 1
            continue
        j = i
        while j < n and boxes[j] is not None and seg[j] == seg[i]:
            j += 1
        run = np.stack([np.asarray(b, dtype=np.float64) for b in boxes[i:j]])  # (L, 4)
        csum = np.concatenate([np.zeros((1, run.shape[1])), np.cumsum(run, axis=0)])
        for k in range(len(run)):
            h = min(half, k, len(run) - 1 - k)
            out[i + k] = (csum[k + h + 1] - csum[k - h]) / (2 * h + 1)
        i = j
    return out


def to_int_box(box: Sequence[float], width: int, height: int) -> Box | None:
    """Round to integer pixels inside the frame; None if fewer than 2 px remain."""
    x1, y1 = max(0, int(round(box[0]))), max(0, int(round(box[1])))
    x2, y2 = min(width, int(round(box[2]))), min(height, int(round(box[3])))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return (x1, y1, x2, y2)


def face_boxes(track: Track, options: TrackOptions = TrackOptions()) -> list[Box | None]:
    """The final crop box of every frame: select, pad, smooth (if enabled), round."""
    raw, segments = follow_face(track.faces, options)
    padded = [None if b is None else pad_box(b, options.pads, track.width, track.height) for b in raw]
    if options.smooth:
        padded = smooth_boxes(padded, options.smooth_window, segments)
    return [None if b is None else to_int_box(b, track.width, track.height) for b in padded]


def check_box(box: Sequence[int], width: int, height: int) -> Box:
    """Validate a user ``--box X1 Y1 X2 Y2`` against the frame size."""
    x1, y1, x2, y2 = (int(v) for v in box)
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise BadOption(
            f"--box {x1} {y1} {x2} {y2} is outside the {width}x{height} frame",
            f"give X1 Y1 X2 Y2 with 0 <= X1 < X2 <= {width} and 0 <= Y1 < Y2 <= {height}",
        )
    return (x1, y1, x2, y2)


def interpolate_faces(a: np.ndarray, b: np.ndarray, n: int, min_iou: float = 0.3) -> list[np.ndarray] | None:
    """Boxes for the ``n`` frames between two detected frames, linearly interpolated, when every face of ``a``
    pairs one-to-one with a face of ``b`` overlapping it by IoU > ``min_iou``; None when they do not (a face
    appeared, left or jumped: those frames must be detected)."""
    if len(a) != len(b):
        return None
    if len(a) == 0:
        return [np.zeros((0, 5), np.float32) for _ in range(n)]
    order, used = [], set()
    for fa in a:
        ious = [(-1.0 if j in used else _iou(fa, fb)) for j, fb in enumerate(b)]
        j = int(np.argmax(ious))
        if ious[j] <= min_iou:
            return None
        used.add(j)
        order.append(j)
    bb = b[order]
    out = []
    for k in range(1, n + 1):
        t = k / (n + 1)
        f = a + (bb - a) * t
        f[:, 4] = np.minimum(a[:, 4], bb[:, 4])
        out.append(f.astype(np.float32))
    return out


def detect_faces(frames: Iterable[np.ndarray], detector, *, batch_size: int = 8, every: int = 1,
                 progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Run ``detector`` over an iterable of frames; keeps only the boxes (constant memory).

    With ``every`` > 1 only every ``every``-th frame (and the first and last) is detected; the frames between two
    detected frames get interpolated boxes when the same faces are found at both ends, and are detected too when
    not (see :func:`interpolate_faces`). Talking-head boxes move smoothly, so this divides detection time by about
    ``every`` at no visible cost after smoothing. At most ``every * batch_size`` frames are held at once.
    """
    from itertools import islice

    def run(batch: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(d, dtype=np.float32).reshape(-1, 5) for d in detector.detect(batch)] if batch else []

    every = max(1, int(every))
    faces: list[np.ndarray] = []
    it = iter(frames)
    prev: np.ndarray | None = None  # detections of the frame before this chunk
    while True:
        chunk = list(islice(it, batch_size * every))
        if not chunk:
            break
        n = len(chunk)
        if every == 1:
            dets: list = run(chunk)
        else:
            keys = sorted(set(range(every - 1, n, every)) | {n - 1} | ({0} if prev is None else set()))
            dets = [None] * n
            for p, d in zip(keys, run([chunk[p] for p in keys])):
                dets[p] = d
            refine: list[int] = []
            last_pos, last = -1, prev
            for p in keys:
                gap = list(range(last_pos + 1, p))
                filled = interpolate_faces(last, dets[p], len(gap)) if gap and last is not None else None
                if filled is not None:
                    for g, f in zip(gap, filled):
                        dets[g] = f
                else:
                    refine.extend(gap)
                last_pos, last = p, dets[p]
            for r, d in zip(refine, run([chunk[r] for r in refine])):
                dets[r] = d
        faces.extend(dets)
        prev = dets[-1]
        if progress is not None:
            progress(n)
    return faces


def track_video(path: str | Path, detector, *, fps: float | None = None, det_size: int | None = None,
                batch_size: int = 8, every: int = 1, progress: Callable[[int], None] | None = None,
                info=None) -> Track:
    """Detect every face in every frame of a video (or still image) streamed from disk.

    With ``det_size``, ffmpeg decodes frames already downscaled so the longest side is at most ``det_size`` px and
    boxes are scaled back to full resolution: faces do not need 1080p to be found. ``every``: see
    :func:`detect_faces`. Tracks keep every detection; :func:`face_boxes` chooses the face. ``info``: the file's
    ``probe`` result, when the caller has it.
    """
    from lipsync_cli.video import FrameReader, probe

    info = info or probe(path)
    scale = 1.0
    kwargs = {}
    if det_size and max(info.width, info.height) > det_size:
        scale = max(info.width, info.height) / det_size
        kwargs["size"] = (max(2, round(info.width / scale)), max(2, round(info.height / scale)))
    with FrameReader(path, fps=fps, info=info, **kwargs) as reader:
        faces = detect_faces(reader, detector, batch_size=batch_size, every=every, progress=progress)
        out_fps = float(reader.fps)
    if kwargs:
        sx, sy = info.width / kwargs["size"][0], info.height / kwargs["size"][1]
        faces = [f * np.array([sx, sy, sx, sy, 1.0], dtype=np.float32) for f in faces]
    return Track(info.width, info.height, out_fps, faces, source=str(path))
