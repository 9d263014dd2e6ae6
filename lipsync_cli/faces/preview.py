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


def write_preview(video: str | os.PathLike, track, out: str | os.PathLike, distances: np.ndarray | None = None,
                  progress: Callable[[int], None] | None = None) -> int:
    """Write ``out`` (an .mp4 with the video's audio): every frame of ``video`` with the faces of ``track``
    drawn and labelled. Returns the frames written."""
    import cv2

    from lipsync_cli.video import FrameReader, VideoWriter, has_audio, probe

    info = probe(video)
    labels = preview_labels(track, distances)
    n = 0
    audio = video if not info.is_image and has_audio(video) else None
    with FrameReader(video, fps=None if info.is_image else track.fps, info=info,
                     still_frames=len(track) if info.is_image else None) as reader, \
            VideoWriter(out, reader.width, reader.height, track.fps, audio_path=audio, preset="veryfast",
                        shortest=audio is not None) as writer:
        for j, frame in enumerate(reader):
            if j < len(track):
                for (x1, y1, x2, y2, _), (t, text, matched) in zip(track.faces[j], labels[j]):
                    colour = PALETTE[t % len(PALETTE)] if t >= 0 else (128, 128, 128)
                    p1, p2 = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
                    cv2.rectangle(frame, p1, p2, colour, 4 if matched else 2)
                    if text:
                        org = (p1[0], max(12, p1[1] - 6))
                        cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
                        cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
            writer.write(frame)
            n += 1
            if progress is not None:
                progress(1)
    return n
