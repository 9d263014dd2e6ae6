"""``lipsync detect --preview``: the video with every face track drawn on it, to check who will be dubbed.

Each detection gets its box in its face track's colour, the track id (``#3``), the identity distance to the
nearest reference face (``d 0.21``, when references were given) and the active-speaker score (``s 2.4``, when
scored); boxes of faces within the identity threshold are drawn thick.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

PALETTE = [(66, 135, 245), (60, 180, 75), (255, 225, 25), (230, 25, 75), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (245, 130, 48), (0, 128, 128), (170, 110, 40)]  # BGR-ish, distinct


def preview_labels(track, distances: np.ndarray | None = None) -> list[list[tuple[int, str, bool]]]:
    """Per frame, per detection: (track id, label text, matched) where ``distances`` is (face tracks, S)."""
    from lipsync_cli.faces.identity import IDENTITY_THRESHOLD
    from lipsync_cli.faces.track import link_tracks

    out: list[list[tuple[int, str, bool]]] = [[(-1, "", False)] * len(f) for f in track.faces]
    for t, ft in enumerate(link_tracks(track.faces, cuts=track.cuts)):
        d = float(np.min(distances[t])) if distances is not None and distances.shape[1] else None
        for f, r in zip(ft.frames, ft.rows):
            text = f"#{t}"
            if d is not None:
                text += f" d {d:.2f}" if np.isfinite(d) else " d -"
            if track.speaking is not None and np.isfinite(track.speaking[f][r]):
                text += f" s {float(track.speaking[f][r]):.1f}"
            out[f][r] = (t, text, d is not None and d <= IDENTITY_THRESHOLD)
    return out


FONT_SCALE = 0.5  # cv2.FONT_HERSHEY_SIMPLEX at 0.5: labels about 14 px tall
OUTLINE = 1  # px of black outline around the coloured text, readable on any background
LABEL_GAP = 4  # px between a box and its label

Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive)


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(boxes: list[tuple[float, float, float, float]], sizes: list[tuple[int, int]], width: int,
                 height: int) -> list[Rect]:
    """Where each box's label goes in a ``width`` x ``height`` frame: a (w, h) rectangle inside the frame, over
    none of the labels placed before it.

    Tried in order: above the box, below it, inside its top edge (each moved left / down / up as much as it
    takes to stay inside the frame); when all of those overlap an earlier label, the first one slides down (then
    up) in steps of one label height to the first free place. A label larger than the frame stays at its
    top-left corner."""
    def fit(x: float, y: float, w: int, h: int) -> Rect:  # moved inside the frame
        x = int(round(min(max(x, 0), max(width - w, 0))))
        y = int(round(min(max(y, 0), max(height - h, 0))))
        return (x, y, x + w, y + h)

    placed: list[Rect] = []
    for (x1, y1, _, y2), (w, h) in zip(boxes, sizes):
        tries = [fit(x1, y1 - LABEL_GAP - h, w, h), fit(x1, y2 + LABEL_GAP, w, h),
                 fit(x1 + LABEL_GAP, y1 + LABEL_GAP, w, h)]
        first = tries[0]
        steps = range(1, height // (h + 1) + 1)
        tries += [fit(first[0], first[1] + k * (h + 1), w, h) for k in steps]
        tries += [fit(first[0], first[1] - k * (h + 1), w, h) for k in steps]
        rect = next((r for r in tries if not any(_overlaps(r, p) for p in placed)), first)
        placed.append(rect)
    return placed


def draw_faces(frame: np.ndarray, faces: np.ndarray, labels: list[tuple[int, str, bool]]) -> list[Rect]:
    """Draw the boxes of one frame's detections (``faces``: (N, 5) [x1, y1, x2, y2, score]) and then their
    labels (:func:`preview_labels` of that frame) on ``frame`` (BGR, in place). Labels stay inside the frame and
    never cover one another (:func:`place_labels`). Returns the rectangle of each drawn label."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    height, width = frame.shape[:2]
    colours = [PALETTE[t % len(PALETTE)] if t >= 0 else (128, 128, 128) for t, _, _ in labels]
    for (x1, y1, x2, y2, _), (_, _, matched), colour in zip(faces, labels, colours):
        cv2.rectangle(frame, (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2))), colour,
                      4 if matched else 2)
    texts = [(i, text) for i, (_, text, _) in enumerate(labels) if text]
    metrics = [cv2.getTextSize(text, font, FONT_SCALE, 1) for _, text in texts]
    # the ink of a label starts at its origin's x and spans (text height) above the baseline to (baseline) below,
    # plus the outline on every side
    sizes = [(w + 2 * OUTLINE, h + base + 2 * OUTLINE) for (w, h), base in metrics]
    rects = place_labels([tuple(faces[i][:4]) for i, _ in texts], sizes, width, height)
    for (i, text), ((_, h), _), (rx, ry, _, _) in zip(texts, metrics, rects):
        x, y = rx + OUTLINE, ry + OUTLINE + h
        # the outline is the 1 px text shifted by one pixel each way: a thicker stroke would also widen the
        # letters' advance (cv2 adds the thickness to it), so the coloured text would drift off its outline
        for dx, dy in ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)):
            cv2.putText(frame, text, (x + dx, y + dy), font, FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(frame, text, (x, y), font, FONT_SCALE, colours[i], 1, cv2.LINE_AA)
    return rects


def write_preview(video: str | os.PathLike, track, out: str | os.PathLike, distances: np.ndarray | None = None,
                  progress: Callable[[int], None] | None = None, info=None) -> int:
    """Write ``out`` (an .mp4 with the video's audio): every frame of ``video`` with the faces of ``track``
    drawn and labelled (:func:`draw_faces`). Returns the frames written. ``info``: the video's probe, when the
    caller has it."""
    from lipsync_cli.media.decode import FrameReader
    from lipsync_cli.media.encode import VideoWriter
    from lipsync_cli.media.probe import probe

    info = info or probe(video)
    labels = preview_labels(track, distances)
    n = 0
    audio = video if not info.is_image and info.has_audio else None
    with FrameReader(video, fps=None if info.is_image else track.fps, info=info,
                     still_frames=len(track) if info.is_image else None) as reader, \
            VideoWriter(out, reader.width, reader.height, track.fps, audio_path=audio, preset="veryfast",
                        shortest=audio is not None, audio_info=info.audio if audio is not None else None) as writer:
        for j, frame in enumerate(reader):
            if j < len(track):
                draw_faces(frame, track.faces[j], labels[j])
            writer.write(frame)
            n += 1
            if progress is not None:
                progress(1)
    return n
