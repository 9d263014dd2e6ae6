"""What the mouth does where nobody speaks (``dub --silence``), and which frames are dubbed at all (segments).

Per output frame and voice, two weights in [0, 1], made once before the frames stream (:func:`plan_mouths`):

- ``speech``: how much of the mouth comes from the speech (the generator on this frame's face and mel window);
  the rest is the pause's *held* mouth (``--silence hold``): the generator's output for one silent mel window on
  one reference frame (the pause's first frame with this face), the same 96x96 mouth pasted into every frame of
  the pause, so it is closed and still and only follows the head's box.
- ``alpha``: how much of the re-drawn face replaces the source frame. 0 outside the segments (the source's frame
  passes untouched) and, with ``--silence source``, inside pauses.

Edges are never a jump: a pause fades in over its first ``fade`` frames and out over its last (the speech frames
around it are fully speech-driven), a segment fades in over its first ``fade`` frames and out over its last (the
frames around it are fully the source's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SILENCE_MODES = ("hold", "model", "source")
SILENCE_DEFAULT = "hold"
SILENCE_FADE = 3  # frames


def distance_to(mask: np.ndarray) -> np.ndarray:
    """Per index, the distance (in indices) to the nearest True of ``mask``; a large number when there is none."""
    n = len(mask)
    big = n + 1 << 20
    d = np.full(n, big, np.int64)
    last = None
    for i in range(n):
        if mask[i]:
            last = i
        if last is not None:
            d[i] = i - last
    last = None
    for i in range(n - 1, -1, -1):
        if mask[i]:
            last = i
        if last is not None:
            d[i] = min(d[i], last - i)
    return d


def fade_weights(on: np.ndarray, fade: int, inside: str) -> np.ndarray:
    """1 where ``on``, 0 where not, with linear ramps of ``fade`` frames at each on/off edge, put ``inside`` the
    'on' or the 'off' runs (the ends of the array are no edge). E.g. fade 3, inside='off': the three off frames
    next to an on frame get 0.75, 0.5, 0.25."""
    on = np.asarray(on, bool)
    w = on.astype(np.float32)
    if fade <= 0 or on.all() or not on.any():
        return w
    step = 1.0 / (fade + 1)
    if inside == "off":
        d = distance_to(on)
        ramp = ~on & (d <= fade)
        w[ramp] = 1.0 - d[ramp] * step
    else:
        d = distance_to(~on)
        ramp = on & (d <= fade)
        w[ramp] = d[ramp] * step
    return w


@dataclass
class MouthPlan:
    """Per voice and output frame: see the module docstring."""

    mode: str
    speech: np.ndarray  # (n_voices, n_out) float32: weight of the speech-driven mouth (the rest: the held one)
    alpha: np.ndarray  # (n_voices, n_out) float32: weight of the re-drawn face over the source frame
    pause: np.ndarray  # (n_voices, n_out) int32: the pause a frame's held mouth belongs to, -1 where none

    def needs_face(self, voice: int, i: int) -> bool:
        return bool(self.alpha[voice, i] > 0)

    def needs_speech(self, voice: int, i: int) -> bool:
        return bool(self.speech[voice, i] > 0)

    def needs_held(self, voice: int, i: int) -> bool:
        return bool(self.speech[voice, i] < 1)


def plan_mouths(speech: list[np.ndarray] | None, n_out: int, mode: str = SILENCE_DEFAULT, fade: int = SILENCE_FADE,
                active: np.ndarray | None = None, n_voices: int = 1) -> MouthPlan:
    """The weights of every output frame from per-frame speech (one bool array per voice, None: speech
    everywhere) and ``active`` (bool per frame: inside a segment; None: every frame)."""
    seg = fade_weights(active, fade, inside="on") if active is not None else np.ones(n_out, np.float32)
    n_voices = len(speech) if speech is not None else n_voices
    speech_w = np.ones((n_voices, n_out), np.float32)
    alpha = np.tile(seg, (n_voices, 1))
    pause = np.full((n_voices, n_out), -1, np.int32)
    if speech is not None and mode != "model":
        for v, s in enumerate(speech):
            s = np.asarray(s[:n_out], bool)
            if len(s) < n_out:
                s = np.concatenate([s, np.zeros(n_out - len(s), bool)])
            w = fade_weights(s, fade, inside="off")
            if mode == "source":
                alpha[v] *= w
            else:
                speech_w[v] = w
                from lipsync_cli.vad import spans

                for k, (a, b) in enumerate(spans(~s)):
                    pause[v, a:b] = k
    return MouthPlan(mode=mode, speech=speech_w, alpha=alpha, pause=pause)


def mix_mouths(speech_mouth: np.ndarray | None, held_mouth: np.ndarray | None, w: float) -> np.ndarray:
    """``w`` of the speech-driven mouth and ``1 - w`` of the held one, (96, 96, 3) uint8; either alone at 1 / 0."""
    if held_mouth is None or w >= 1:
        return speech_mouth
    if speech_mouth is None or w <= 0:
        return held_mouth
    mix = speech_mouth.astype(np.float32) * w + held_mouth.astype(np.float32) * (1 - w)
    return (mix + 0.5).astype(np.uint8)


def mix_region(frame: np.ndarray, before: np.ndarray, box, alpha: float) -> None:
    """In place: the box of ``frame`` becomes ``alpha`` of itself over ``1 - alpha`` of ``before`` (the box's
    pixels before blending)."""
    x1, y1, x2, y2 = box
    roi = frame[y1:y2, x1:x2]
    mix = roi.astype(np.float32) * alpha + before.astype(np.float32) * (1 - alpha)
    roi[:] = (mix + 0.5).astype(frame.dtype)
