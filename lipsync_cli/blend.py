"""Cutting faces out of frames for the generator, and putting generated mouths back.

``prepare_batch`` builds the generator input exactly as Wav2Lip's inference does; ``paste`` is Wav2Lip's blend
(the whole 96x96 prediction resized into the box); ``feather`` blends only the lower face through a soft mask so
no box edge shows.

Frames are uint8, or uint16 (0..65535) for sources of more than 8 bits per channel: the generator always sees
8-bit crops (``crop_face`` rounds 16-bit ones to the 8-bit equivalent) and its 8-bit mouths are blended into a
16-bit frame at 16 bits, so the pixels outside the mouth keep their depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

from lipsync_cli.constants import FACE_HALF, FACE_SIZE

BLEND_MODES = ("feather", "paste")


def crop_face(frame: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The box's pixels resized to FACE_SIZE x FACE_SIZE (bilinear, as Wav2Lip). (96, 96, 3) uint8 BGR, also
    from a uint16 frame (v16 / 257, rounded: the 8-bit value the same colour has)."""
    x1, y1, x2, y2 = box
    return to_8bit(cv2.resize(frame[y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE)))


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as they are; uint16 ones as the 8-bit value of the same colour (v16 / 257, rounded)."""
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return pixels


def _scale_of(frame: np.ndarray) -> float:
    """What one 8-bit step is worth in ``frame``'s dtype: 1 for uint8, 257 for uint16 (255 * 257 = 65535)."""
    return 257.0 if frame.dtype == np.uint16 else 1.0


def prepare_batch(faces: np.ndarray) -> np.ndarray:
    """Generator input from face crops, as Wav2Lip: the target with rows 48: zeroed, then the reference.

    faces: (B, 96, 96, 3) uint8 BGR. Returns (B, 6, 96, 96) float32 in [0, 1].
    """
    masked = faces.copy()
    masked[:, FACE_HALF:] = 0
    both = np.concatenate([masked, faces], axis=3)  # (B, 96, 96, 6)
    return np.ascontiguousarray(both.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def to_uint8(pred: np.ndarray) -> np.ndarray:
    """Generator output (B, 3, 96, 96) in [0, 1] -> (B, 96, 96, 3) uint8, truncating as Wav2Lip's ``astype``."""
    return (pred.transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)


# the same two steps as torch ops on the generator's device (the dub engine uploads uint8 crops and downloads
# uint8 mouths: 4x fewer bytes each way than float32); numerically equal to the numpy functions above


def prepare_batch_tensor(faces):
    """:func:`prepare_batch` on a torch tensor, on its device: (B, 96, 96, 3) uint8 -> (B, 6, 96, 96) float32 in
    [0, 1], with channels-last strides (what the generator runs fastest on)."""
    import torch

    masked = torch.cat([faces[:, :FACE_HALF], torch.zeros_like(faces[:, FACE_HALF:])], dim=1)
    both = torch.cat([masked, faces], dim=3)  # (B, 96, 96, 6)
    return both.permute(0, 3, 1, 2).float() / 255.0  # (B, 6, 96, 96), NHWC in memory


def to_uint8_tensor(pred):
    """:func:`to_uint8` on a torch tensor, on its device: (B, 3, 96, 96) in [0, 1] (any float dtype) ->
    (B, 96, 96, 3) uint8, truncating."""
    import torch

    return (pred.float().permute(0, 2, 3, 1) * 255.0).to(torch.uint8).contiguous()


def paste(frame: np.ndarray, face: np.ndarray, box: Sequence[int]) -> None:
    """Wav2Lip's blend, in place: the (96, 96, 3) prediction resized to the box and pasted over it."""
    x1, y1, x2, y2 = box
    resized = cv2.resize(face, (x2 - x1, y2 - y1))
    frame[y1:y2, x1:x2] = resized if frame.dtype == np.uint8 else resized.astype(frame.dtype) * np.uint16(257)


@lru_cache(maxsize=8)
def _feather_mask(w: int, h: int) -> np.ndarray:
    """(h, w, 1) float32 weights: 1 over the mouth region, fading to 0 at the box's sides and above the nose line.

    The generator only redraws the lower half of its input; blending from ~40% of the box height downwards with
    soft edges (a Gaussian of ~8% of the box) hides the seam and keeps the original eyes and hair sharp.
    """
    mask = np.zeros((h, w), np.float32)
    top, bottom, margin_x, k = _feather_geometry(w, h)
    mask[top:bottom, margin_x:w - margin_x] = 1.0
    mask = cv2.GaussianBlur(mask, (k, k), 0)
    return mask[:, :, None]


def _feather_geometry(w: int, h: int) -> tuple[int, int, int, int]:
    """The feather mask's rows of weight 1 (``top:bottom``), its side margin and its Gaussian kernel size (odd)."""
    return (int(round(h * 0.42)), h - max(1, h // 40), max(1, int(round(w * 0.08))),
            max(3, int(round(max(w, h) * 0.08)) | 1))


@lru_cache(maxsize=8)
def _feather_masks(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """The feather mask and its complement ``1 - mask``, (h, w, 1) float32 each, computed once per box size."""
    m = _feather_mask(w, h)
    return m, 1.0 - m


def mouth_mask(w: int, h: int) -> np.ndarray:
    """The dub's blend weights for a w x h face box, (h, w, 1) float32 in [0, 1]: where the generator's mouth is
    blended in (``feather``), and the only place ``dub --enhance`` touches."""
    return _feather_mask(w, h)


@lru_cache(maxsize=256)
def _feather_first_row(w: int, h: int) -> int:
    top, bottom, margin_x, k = _feather_geometry(w, h)
    if bottom <= top or w - margin_x <= margin_x:
        return 0  # an empty mask (a box a few pixels high or wide): nothing saved
    top = max(0, top - k // 2)  # the mask's first row with any weight: the blur reaches k // 2 rows up
    # feather's bicubic resize makes box row y from prediction rows floor(src) - 1 .. floor(src) + 2, where
    # src = (y + 0.5) * FACE_SIZE / h - 0.5; one row more is kept for the rounding of that mapping
    src = (top + 0.5) * FACE_SIZE / h - 0.5
    return max(0, int(np.floor(src)) - 2)


def first_row_read(box: Sequence[int], mode: str = "feather") -> int:
    """The first row of a generated (96, 96, 3) face that ``blend(frame, face, box, mode)`` reads: the rows above
    it never reach the frame (their weight is 0), so the generator need not compute them
    (``Wav2Lip.forward_rows``). 'feather' starts at ~35 of 96 (the mask begins at ~38% of the box); 'paste'
    reads every row (0)."""
    if mode != "feather":
        return 0
    x1, y1, x2, y2 = box
    return _feather_first_row(x2 - x1, y2 - y1)


def feather(frame: np.ndarray, face: np.ndarray, box: Sequence[int]) -> None:
    """Blend the lower part of the prediction into ``frame`` in place through a soft mask."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    pred = cv2.resize(face, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    if frame.dtype != np.uint8:
        pred *= np.float32(_scale_of(frame))
    roi = frame[y1:y2, x1:x2]
    m, inv = _feather_masks(w, h)
    # roi * (1 - m) + pred * m + 0.5, truncated: the same float32 operations in the same order, in place (two
    # temporaries of the box's size instead of five)
    out = roi.astype(np.float32)
    out *= inv
    pred *= m
    out += pred
    out += np.float32(0.5)
    np.copyto(roi, out, casting="unsafe")


def blend(frame: np.ndarray, face: np.ndarray, box: Sequence[int], mode: str = "feather") -> None:
    """Put a generated face back into ``frame`` (in place) with ``mode`` 'feather' or 'paste'."""
    (paste if mode == "paste" else feather)(frame, face, box)
