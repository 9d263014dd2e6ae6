"""One face per frame: finding the shots, linking faces into tracks, choosing the speaker, smoothing its box,
padding it, saving it.

A :class:`Track` holds every detection of every frame and the frames where the shot changes (so the choice of face
can be redone when a track is reused); :func:`face_boxes` turns it into the final per-frame crop boxes the
generator uses. The choice is made offline, knowing the whole video: detections are linked frame to frame into
face tracks (:func:`link_tracks`, which also serves ``eval lse``), a face missing for up to ``max_gap`` frames
stays the same track, and the speaker is chosen per shot (:func:`follow_face`). Frames without the chosen face
get ``None`` and pass through the dub unchanged.
"""

from __future__ import annotations

import json
import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lipsync_cli.constants import CUT_THRESHOLD, DEFAULT_PADS, MAX_GAP
from lipsync_cli.errors import BadOption, InputNotFound
from lipsync_cli.faces.boxes import box_area, box_iou, centre_distance, detection_size

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels (x right, y down), x2/y2 exclusive

TRACK_FORMAT = "lipsync_cli.track"
TRACK_VERSION = 3  # 2: "cuts"; 3: "fingerprint", "embeddings", "speaking" (older files still load)
FINGERPRINT_BYTES = 1 << 20  # a video's fingerprint hashes its size and its first and last MiB

LINK_IOU = 0.2  # a detection continues a face track when it overlaps the track's last box by more than this
LINK_SHIFT = 0.5  # ... or when its centre moved less than this fraction of the box's longer side
LINK_SCALE = 1.5  # ... and its longer side is within this factor of the box's (a face does not double in size)
MIN_SHOT = 15  # frames: cuts closer than this are merged (ContentDetector's min_scene_len)
CUT_WIDTH = 256  # px: frames are shrunk to this width for cut detection (PySceneDetect's auto-downscale target)


@dataclass(frozen=True)
class TrackOptions:
    """How detections become one box per frame.

    pads: pixels added (top, bottom, left, right) around the detected box, as Wav2Lip's ``--pads``; the default
        adds 10 px below so the chin is inside the crop.
    smooth: average each box coordinate over a centred window of ``smooth_window`` frames (see :func:`smooth_boxes`).
    ref_box: dub the face nearest this box (x1, y1, x2, y2) in each shot instead of the largest face.
    max_gap: frames a face may be missing (hidden, turned away, blurred) and still be the same face: those frames
        pass through, and the dub goes on with the same person after them (see :func:`follow_face`).
    min_score: detections scored below this are ignored.
    """

    pads: tuple[int, int, int, int] = DEFAULT_PADS
    smooth: bool = True
    smooth_window: int = 5
    ref_box: tuple[float, float, float, float] | None = None
    max_gap: int = MAX_GAP
    min_score: float = 0.5

    def __post_init__(self):
        if len(self.pads) != 4 or any(p < 0 for p in self.pads):
            raise BadOption(f"--pads must be four non-negative integers, got {self.pads}")
        if self.smooth_window < 1:
            raise BadOption(f"smoothing window must be >= 1 frame, got {self.smooth_window}")
        if self.max_gap < 0:
            raise BadOption(f"the longest gap a face may have must be >= 0 frames, got {self.max_gap}")
        if self.ref_box is not None:
            x1, y1, x2, y2 = self.ref_box
            if x2 <= x1 or y2 <= y1:
                raise BadOption(f"reference box {self.ref_box} is empty: give X1 Y1 X2 Y2 with X2 > X1 and Y2 > Y1")


@dataclass
class Track:
    """Every detection of a video: ``faces[i]`` is an (N, 5) array [x1, y1, x2, y2, score] for frame i.

    ``cuts``: the frames where a new shot starts (sorted, never 0), found in the frames by :func:`track_video`;
    None when unknown (a track file written before cuts were recorded): the video is then one shot.
    ``fingerprint``: :func:`video_fingerprint` of the video it was made from (None in files before version 3).
    ``embeddings``: ``{frame: (N, D) float32}`` ArcFace embeddings of some detections of that frame (rows as in
    ``faces[frame]``, NaN for the detections not embedded), made by ``embedder`` (see
    :mod:`lipsync_cli.faces.identity`).
    ``speaking``: per frame an (N,) float32 SyncNet confidence that each detection is the one speaking in the
    video's own audio (NaN where not scored; see :mod:`lipsync_cli.speakers`), or None.
    """

    width: int
    height: int
    fps: float
    faces: list[np.ndarray] = field(default_factory=list)
    source: str = ""
    cuts: list[int] | None = None
    fingerprint: str | None = None
    embeddings: dict[int, np.ndarray] | None = None
    embedder: str | None = None
    speaking: list[np.ndarray] | None = None

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
        if self.cuts is not None:
            data["cuts"] = [int(c) for c in self.cuts]
        if self.fingerprint is not None:
            data["fingerprint"] = self.fingerprint
        if self.embeddings is not None:
            data["embeddings"] = {
                "model": self.embedder or "",
                "frames": {str(f): [None if not np.all(np.isfinite(r)) else [round(float(v), 5) for v in r]
                                    for r in e] for f, e in sorted(self.embeddings.items())},
            }
        if self.speaking is not None:
            data["speaking"] = [[None if not math.isfinite(float(v)) else round(float(v), 4) for v in s]
                                for s in self.speaking]
        from lipsync_cli.files import atomic_write

        atomic_write(path, json.dumps(data, separators=(",", ":")))

    @classmethod
    def load(cls, path: str | Path) -> Track:
        """Read a track file written by :meth:`save` (any version). Raises InputNotFound, or BadOption naming
        the file when it is not a track file or holds anything but finite numbers where boxes belong."""
        path = Path(path)
        if not path.is_file():
            raise InputNotFound(f"track file not found: {path}", "create one with `lipsync detect VIDEO -o track.json`")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("format") != TRACK_FORMAT:
                raise ValueError("not a lipsync track")
            width, height, fps = _int(data["width"], "width"), _int(data["height"], "height"), _number(data["fps"])
            if width < 1 or height < 1 or not fps > 0:
                raise ValueError(f"a {width}x{height} frame at {fps} fps")
            if not isinstance(data["faces"], list):
                raise ValueError("faces is not a list of frames")
            faces = [_frame_faces(f, i) for i, f in enumerate(data["faces"])]
            cuts = data.get("cuts")
            if cuts is not None:
                if not isinstance(cuts, list):
                    raise ValueError("cuts is not a list of frames")
                cuts = [_int(c, "cut") for c in cuts]
                if cuts != sorted(set(cuts)) or any(not 0 < c < len(faces) for c in cuts):
                    raise ValueError(f"cuts must be increasing frame numbers in 1..{len(faces) - 1}")
            fingerprint = data.get("fingerprint")
            if fingerprint is not None and not isinstance(fingerprint, str):
                raise ValueError("fingerprint is not a string")
            embeddings, embedder = _read_embeddings(data.get("embeddings"), faces)
            speaking = _read_speaking(data.get("speaking"), faces)
            return cls(width, height, fps, faces, str(data.get("source", "")), cuts, fingerprint, embeddings,
                       embedder, speaking)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise BadOption(f"{path} is not a track file written by `lipsync detect` ({err})",
                            "write it again with `lipsync detect VIDEO -o track.json`") from None

    def check_matches(self, width: int, height: int, n_frames: int | None, fingerprint: str | None = None) -> None:
        """Refuse a track made for another video: different size, far fewer frames, or (when both are known)
        another :func:`video_fingerprint`."""
        if fingerprint is not None and self.fingerprint is not None and fingerprint != self.fingerprint:
            raise BadOption(
                f"the track was made for another video (fingerprint {self.fingerprint}, this video's is "
                f"{fingerprint}{', made from ' + self.source if self.source else ''})",
                "run `lipsync detect` on this video",
            )
        if (self.width, self.height) != (width, height):
            raise BadOption(
                f"the track was made for a {self.width}x{self.height} video, this one is {width}x{height}",
                "run `lipsync detect` on this video",
            )
        if n_frames is not None and abs(len(self.faces) - n_frames) > 1:
            raise BadOption(
                f"the track has {len(self.faces)} frames, the video {n_frames}", "run `lipsync detect` on this video"
            )


def video_fingerprint(path: str | os.PathLike) -> str:
    """A short hex digest of a media file's size and first and last ``FINGERPRINT_BYTES``: cheap at any length,
    and different for another video of the same size and length (a re-encoded or re-muxed copy counts as
    another video)."""
    import hashlib

    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            h.update(f.read(FINGERPRINT_BYTES))
    return h.hexdigest()[:16]


def _read_embeddings(block, faces: list[np.ndarray]) -> tuple[dict[int, np.ndarray] | None, str | None]:
    """The "embeddings" block of a track file: ``{frame: (N, D)}`` rows aligned with that frame's faces."""
    if block is None:
        return None, None
    if not isinstance(block, dict) or not isinstance(block.get("frames"), dict):
        raise ValueError("embeddings must be {\"model\": ..., \"frames\": {frame: rows}}")
    out: dict[int, np.ndarray] = {}
    dim = None
    for key, rows in block["frames"].items():
        f = int(key)
        if not 0 <= f < len(faces) or not isinstance(rows, list) or len(rows) != len(faces[f]):
            raise ValueError(f"embeddings of frame {key}: one row (or null) per face of that frame")
        vecs = [r for r in rows if r is not None]
        if any(not isinstance(r, list) for r in vecs):
            raise ValueError(f"embeddings of frame {key}: rows must be lists of numbers")
        for r in vecs:
            dim = len(r) if dim is None else dim
            if len(r) != dim or dim == 0:
                raise ValueError(f"embeddings of frame {key}: rows of different lengths")
        arr = np.full((len(rows), dim or 1), np.nan, np.float32)
        for k, r in enumerate(rows):
            if r is not None:
                arr[k] = [_number(v) for v in r]
        out[f] = arr
    return out, str(block.get("model", "")) or None


def _read_speaking(rows, faces: list[np.ndarray]) -> list[np.ndarray] | None:
    """The "speaking" block: per frame, one number (or null) per face."""
    if rows is None:
        return None
    if not isinstance(rows, list) or len(rows) != len(faces):
        raise ValueError("speaking must hold one list per frame")
    out = []
    for i, (r, f) in enumerate(zip(rows, faces)):
        if not isinstance(r, list) or len(r) != len(f):
            raise ValueError(f"speaking of frame {i}: one score (or null) per face")
        out.append(np.array([np.nan if v is None else _number(v) for v in r], np.float32))
    return out


def _number(v) -> float:
    """A finite JSON number (not a bool, string or null), else ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{v!r} is not a finite number")
    return float(v)


def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{what} {v!r} is not a whole number")
    return v


def _frame_faces(rows, index: int) -> np.ndarray:
    """The (N, 5) float32 detections of frame ``index`` from their JSON rows, each five finite numbers."""
    if not isinstance(rows, list) or any(not isinstance(r, list) or len(r) != 5 for r in rows):
        raise ValueError(f"frame {index}: faces must be rows of five numbers [x1, y1, x2, y2, score]")
    try:
        arr = np.array([[_number(v) for v in r] for r in rows], dtype=np.float64).reshape(-1, 5)
    except ValueError as err:
        raise ValueError(f"frame {index}: {err}") from None
    with np.errstate(over="ignore"):
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"frame {index}: a box coordinate is too large for a pixel position")
    return arr


@dataclass
class FaceTrack:
    """One face followed through consecutive frames of one shot: the frames it was detected in (increasing;
    gaps of up to ``max_gap`` frames between them) and its (4,) box in each."""

    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # row of each detection in its frame's (N, 5) array

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    def add(self, frame: int, box: np.ndarray, row: int = -1) -> None:
        self.frames.append(frame)
        self.boxes.append(np.asarray(box[:4], dtype=np.float64))
        self.rows.append(int(row))

    def within(self, lo: int, hi: int) -> slice:
        """The part of ``frames`` / ``boxes`` in frames lo..hi-1 (an empty slice when the face is not there)."""
        return slice(bisect_left(self.frames, lo), bisect_left(self.frames, hi))


def link_tracks(faces: Sequence[np.ndarray], *, cuts: Iterable[int] | None = None, min_score: float = 0.5,
                max_gap: int = MAX_GAP, min_iou: float = LINK_IOU, max_shift: float = LINK_SHIFT) -> list[FaceTrack]:
    """Link the detections of every frame into face tracks, offline (every frame's detections are known).

    Frame after frame, each detection continues the track whose last box it overlaps most (IoU > ``min_iou``),
    or, failing that, the track whose last box's centre is nearest, when it is within ``max_shift`` x that box's
    longer side and the two boxes' sizes are within a factor ``LINK_SCALE`` (``max_shift=0``: IoU only); a track
    takes at most one detection per frame. A track not continued for more than ``max_gap`` frames ends, and no
    track continues across a shot cut (``cuts``: the frames that start a new shot). Detections left over start
    new tracks. ``faces[i]``: (N, 5) [x1, y1, x2, y2, score] of frame i; detections scored below ``min_score``
    are ignored. Returns the tracks in order of their first frame.
    """
    cut_set = set(cuts or ())
    tracks: list[FaceTrack] = []
    live: list[FaceTrack] = []
    for t, dets in enumerate(faces):
        dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
        kept = np.nonzero(dets[:, 4] >= min_score)[0]  # rows in the frame's array
        dets = dets[kept]
        live = [] if t in cut_set else [tr for tr in live if t - tr.last - 1 <= max_gap]
        taken: set[int] = set()
        if live and len(dets):
            last = np.stack([tr.boxes[-1] for tr in live])  # (L, 4)
            iou = box_iou(last, dets)  # (L, D)
            track_side = np.maximum(last[:, 2] - last[:, 0], last[:, 3] - last[:, 1])[:, None]  # (L, 1)
            det_side = np.maximum(dets[:, 2] - dets[:, 0], dets[:, 3] - dets[:, 1])[None, :]  # (1, D)
            centres_t, centres_d = (last[:, :2] + last[:, 2:4]) / 2, (dets[:, :2] + dets[:, 2:4]) / 2  # (L|D, 2)
            shift = np.linalg.norm(centres_t[:, None] - centres_d[None], axis=-1) / np.maximum(track_side, 1e-6)
            near = (shift < max_shift) & (det_side < LINK_SCALE * track_side) & (track_side < LINK_SCALE * det_side)
            # one cost for both rules: IoU matches (-1 .. -min_iou) before centre matches (1 .. 1 + max_shift)
            cost = np.where(iou > min_iou, -iou, np.where(near, 1.0 + shift, np.inf))
            used: set[int] = set()
            for flat in np.argsort(cost, axis=None, kind="stable"):
                a, d = divmod(int(flat), cost.shape[1])
                if not np.isfinite(cost[a, d]):
                    break
                if a not in used and d not in taken:
                    used.add(a)
                    taken.add(d)
                    live[a].add(t, dets[d], kept[d])
        for d in range(len(dets)):
            if d not in taken:
                tr = FaceTrack()
                tr.add(t, dets[d], kept[d])
                tracks.append(tr)
                live.append(tr)
    return tracks


def shot_bounds(n_frames: int, cuts: Iterable[int] | None) -> list[tuple[int, int]]:
    """The shots of a video as (start, stop) frame ranges, from the frames where a new shot starts."""
    edges = [0, *sorted(c for c in set(cuts or ()) if 0 < c < n_frames), n_frames]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _speaker_rank(track: FaceTrack, lo: int, hi: int, ref_box: Sequence[float] | None) -> tuple[float, float]:
    """How well ``track`` (its frames in lo..hi-1, at least one) fits as the speaker: lower is better."""
    part = track.within(lo, hi)
    frames, boxes = track.frames[part], track.boxes[part]
    # big and persistent faces first: mean linear size (px) x the frames from its first to its last appearance
    # in lo..hi-1, so that a brief miss costs the speaker nothing
    presence = float(np.mean([math.sqrt(box_area(b)) for b in boxes])) * (frames[-1] - frames[0] + 1)
    if ref_box is None:
        return (-presence, 0.0)
    return (float(np.mean([centre_distance(ref_box, b) for b in boxes])), -presence)


def follow_face(faces: Sequence[np.ndarray], options: TrackOptions = TrackOptions(),
                cuts: Iterable[int] | None = None) -> tuple[list[np.ndarray | None], list[int]]:
    """The speaker's raw (4,) box in every frame (None where it was not detected), and a segment id per frame.

    Offline, in two steps. The detections are linked into face tracks (:func:`link_tracks`): a face missing for
    up to ``options.max_gap`` frames (a hand, a turn of the head, motion blur) stays the same track, and no track
    crosses a shot cut (``cuts``). Then, in each shot, the speaker is the track nearest ``options.ref_box``
    (mean centre distance), or the largest and most persistent one (mean box side x the frames from its first to
    its last appearance): it is dubbed from its first to its last frame in the shot, with the frames where it is
    missing passed through (None), never given another face. Only the frames of the shot before or after that
    stretch (the speaker not there yet, or gone) are given to another track, chosen by the same rule among the
    faces there. Each stretch is its own segment: smoothing never averages two faces.
    """
    n = len(faces)
    boxes: list[np.ndarray | None] = [None] * n
    ids = [-1] * n
    tracks = link_tracks(faces, cuts=cuts, min_score=options.min_score, max_gap=options.max_gap)
    segment = 0
    for lo, hi in shot_bounds(n, cuts):
        todo = [(lo, hi)]  # stretches of the shot still without a speaker
        in_shot = [tr for tr in tracks if tr.first < hi and tr.last >= lo]
        while todo:
            a, b = todo.pop()
            present = [tr for tr in in_shot if tr.frames[tr.within(a, b)]]
            if not present:
                continue
            best = min(present, key=lambda tr: _speaker_rank(tr, a, b, options.ref_box))
            part = best.within(a, b)
            first, last = best.frames[part][0], best.frames[part][-1]
            for f, box in zip(best.frames[part], best.boxes[part]):
                boxes[f] = box.copy()
            ids[first:last + 1] = [segment] * (last + 1 - first)
            segment += 1
            todo += [(a, first), (last + 1, b)]
    return boxes, ids


def select_faces(faces: Sequence[np.ndarray], options: TrackOptions = TrackOptions(),
                 cuts: Iterable[int] | None = None) -> list[np.ndarray | None]:
    """The boxes of :func:`follow_face`: per frame the speaker's raw (4,) box, or None."""
    return follow_face(faces, options, cuts)[0]


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
    """The final crop box of every frame: choose the speaker in each shot of ``track``, pad, smooth (if
    enabled), round."""
    raw, segments = follow_face(track.faces, options, track.cuts)
    return finish_boxes(raw, segments, options, track.width, track.height)


def finish_boxes(raw: Sequence[np.ndarray | None], segments: Sequence[int], options: TrackOptions, width: int,
                 height: int) -> list[Box | None]:
    """Raw (4,) boxes of one person per frame (None: not dubbed) -> final crop boxes: pad, smooth within each
    segment (if enabled), round to pixels inside the ``width`` x ``height`` frame."""
    padded = [None if b is None else pad_box(b, options.pads, width, height) for b in raw]
    if options.smooth:
        padded = smooth_boxes(padded, options.smooth_window, segments)
    return [None if b is None else to_int_box(b, width, height) for b in padded]


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
    overlap = box_iou(a, b)  # (len(a), len(b))
    for i in range(len(a)):
        ious = [(-1.0 if j in used else overlap[i, j]) for j in range(len(b))]
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


class CutDetector:
    """Shot cuts found in the frames themselves, one frame at a time: PySceneDetect's ``ContentDetector`` (the
    mean change of hue, saturation and luma between consecutive frames above ``threshold``, cuts closer than
    ``min_shot`` frames merged), on frames shrunk to ``CUT_WIDTH`` px wide as PySceneDetect does by default.

    ``feed(frame)`` each frame in order, then ``cuts()``: the frames where a new shot starts."""

    def __init__(self, fps: float, threshold: float = CUT_THRESHOLD, min_shot: int = MIN_SHOT):
        from scenedetect.common import FrameTimecode
        from scenedetect.detectors import ContentDetector

        if not threshold > 0:
            raise BadOption(f"the cut threshold must be > 0, got {threshold}")
        self._timecode = FrameTimecode
        self._detector = ContentDetector(threshold=float(threshold), min_scene_len=max(1, int(min_shot)))
        self.fps = float(fps)
        self.n_frames = 0
        self._cuts: list[int] = []

    def feed(self, frame: np.ndarray) -> None:
        import cv2

        h, w = frame.shape[:2]
        if w > CUT_WIDTH:
            frame = cv2.resize(frame, (CUT_WIDTH, max(1, round(h * CUT_WIDTH / w))), interpolation=cv2.INTER_AREA)
        found = self._detector.process_frame(self._timecode(self.n_frames, self.fps), frame)
        self._cuts += [c.frame_num for c in found]
        self.n_frames += 1

    def cuts(self) -> list[int]:
        if self.n_frames:
            self._cuts += [c.frame_num for c in self._detector.post_process(self._timecode(self.n_frames - 1,
                                                                                           self.fps))]
        return sorted({c for c in self._cuts if 0 < c < self.n_frames})


def detection_frame_size(info, det_size: int | None) -> tuple[int, int] | None:
    """(width, height) the frames of ``info``'s video are shrunk to for detection (longest side ``det_size``), or
    None when they are detected at full size."""
    if not det_size:
        return None
    h, w = detection_size(info.height, info.width, det_size)
    return None if (h, w) == (info.height, info.width) else (max(2, w), max(2, h))


def track_frames(frames: Iterable[np.ndarray], detector, info, fps: float, *, size: tuple[int, int] | None = None,
                 batch_size: int = 8, every: int = 1, progress: Callable[[int], None] | None = None,
                 cut_threshold: float | None = CUT_THRESHOLD) -> Track:
    """The faces and shot cuts of the frames of ``info``'s video, given in order at ``fps`` (at ``size``, (width,
    height), when shrunk for detection: boxes are scaled back to full resolution). Each frame goes through the
    detector (:func:`detect_faces`, ``every``) and a :class:`CutDetector` (``cut_threshold``; None: no cut
    detection, the video is one shot). The frames may come from any decode: :func:`track_video` opens its own,
    ``lipsync_cli.analysis`` shares one with the other analysers."""
    shots = CutDetector(fps, cut_threshold) if cut_threshold is not None and not info.is_image else None

    def fed() -> Iterator[np.ndarray]:
        for frame in frames:
            if shots is not None:
                shots.feed(frame)
            yield frame

    faces = detect_faces(fed(), detector, batch_size=batch_size, every=every, progress=progress)
    if size is not None:
        sx, sy = info.width / size[0], info.height / size[1]
        faces = [f * np.array([sx, sy, sx, sy, 1.0], dtype=np.float32) for f in faces]
    if shots is not None:
        cuts: list[int] | None = shots.cuts()
    else:  # a still image is one shot; without cut detection the cuts are unknown
        cuts = None if cut_threshold is None else []
    return Track(info.width, info.height, float(fps), faces, source=str(info.path), cuts=cuts,
                 fingerprint=video_fingerprint(info.path))


def track_video(path: str | Path, detector, *, fps: float | None = None, det_size: int | None = None,
                batch_size: int = 8, every: int = 1, progress: Callable[[int], None] | None = None,
                info=None, cut_threshold: float | None = CUT_THRESHOLD) -> Track:
    """Detect every face in every frame of a video (or still image) streamed from disk, and find its shot cuts
    (:func:`track_frames`).

    With ``det_size``, ffmpeg decodes frames already downscaled so the longest side is at most ``det_size`` px and
    boxes are scaled back to full resolution: faces do not need 1080p to be found. ``every``: see
    :func:`detect_faces`. Tracks keep every detection; :func:`face_boxes` chooses the face.
    ``info``: the file's ``probe`` result, when the caller has it.
    """
    from lipsync_cli.media.decode import FrameReader
    from lipsync_cli.media.probe import probe

    info = info or probe(path)
    size = detection_frame_size(info, det_size)
    with FrameReader(path, fps=fps, info=info, size=size) as reader:
        track = track_frames(reader, detector, info, float(reader.fps), size=size, batch_size=batch_size,
                             every=every, progress=progress, cut_threshold=cut_threshold)
    track.source = str(path)
    return track
