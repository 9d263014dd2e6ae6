"""Look at where an attention generator looks: spatial attention maps over the input faces, as a PNG grid.

Two steps, both library functions: :func:`collect_faces` turns a video (or image) plus speech into generator
inputs for a few frames (crops exactly as ``dub`` makes them); :func:`render_attention_grid` runs the
generator once with attention recording on and draws rows = faces, columns = the input face + one map per
chosen block, each map upsampled to the face, normalised to its own min..max and overlaid as a heat map
(red = high weight).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync_cli.constants import DEFAULT_FPS, DEFAULT_PADS, FACE_SIZE
from lipsync_cli.errors import BadOption, EncodeError, NoFaceError

DEFAULT_N_FRAMES = 4  # faces (grid rows) when not asked otherwise
CELL = 128  # px: side of one grid cell (the 96 px face scaled up so the maps are easy to see)
HEADER = 18  # px: height of the label strip above each column
OVERLAY_ALPHA = 0.5  # weight of the heat map over the face


@dataclass(frozen=True)
class FaceSample:
    """Generator inputs for a few frames: ``faces`` (N, 6, 96, 96) float32 [0, 1] BGR (masked target +
    reference), ``mels`` (N, 1, 80, 16) float32, the source ``frame_indices`` (N,) and ``boxes`` used."""

    faces: np.ndarray
    mels: np.ndarray
    frame_indices: list[int]
    boxes: list[tuple[int, int, int, int]]


def pick_frames(n_available: int, n: int) -> list[int]:
    """``n`` frame indices spread evenly over ``range(n_available)`` (first and last included), no repeats."""
    if n_available < 1:
        raise BadOption("the inputs give no frame to inspect")
    if n < 1:
        raise BadOption(f"--frames must be >= 1, got {n}")
    return sorted({int(round(x)) for x in np.linspace(0, n_available - 1, min(n, n_available))})


def collect_faces(video: str | os.PathLike, audio: str | os.PathLike, *, n_frames: int = DEFAULT_N_FRAMES,
                  box: Sequence[int] | None = None, detector=None, pads: Sequence[int] = DEFAULT_PADS,
                  fps: float = DEFAULT_FPS, lead: int = 0) -> FaceSample:
    """Face crops and mel windows of ``n_frames`` frames spread over the part of ``video`` the audio covers.

    box: a fixed face box X1 Y1 X2 Y2 in pixels; otherwise ``detector`` (a ``FaceDetector``) finds the largest
    face in each chosen frame and ``pads`` (top, bottom, left, right px) are added, as ``dub`` does.
    fps: frame rate given to a still image (a video keeps its own). lead: the generator's audio/video lead in
    frames (``model.mel_lead``): frame f gets the window ``dub`` gives it, ``audio.mel_start(f, fps, lead)``.
    Frames without a face are left out; raises NoFaceError when none has one.
    """
    from lipsync_cli.audio import load_audio, mel_start, mel_windows, melspectrogram, n_output_frames
    from lipsync_cli.blend import crop_face, prepare_batch
    from lipsync_cli.faces.track import TrackOptions, check_box, pad_box, to_int_box
    from lipsync_cli.media.decode import FrameReader
    from lipsync_cli.media.probe import probe

    if box is None and detector is None:
        raise BadOption("give a face box or a face detector")
    info = probe(video)
    rate = float(fps) if info.is_image else float(info.fps)
    wav = load_audio(audio)
    mel = melspectrogram(wav)  # (80, T)
    n_out = n_output_frames(len(wav), rate)  # the frames a dub of this audio writes
    n_avail = n_out if info.is_image or not info.n_frames else min(n_out, info.n_frames)
    idx = pick_frames(n_avail, n_frames)

    wanted = set(idx)
    frames: dict[int, np.ndarray] = {}
    if info.is_image:
        with FrameReader(video, info=info) as reader:
            still = next(iter(reader))
        frames = {i: still for i in idx}
    else:
        with FrameReader(video, max_frames=idx[-1] + 1, info=info) as reader:
            for i, frame in enumerate(reader):
                if i in wanted:
                    frames[i] = frame
        idx = [i for i in idx if i in frames]  # a stream shorter than its header says

    if box is not None:
        fixed = check_box(box, info.width, info.height)
        boxes: list[tuple[int, int, int, int] | None] = [fixed] * len(idx)
    else:
        dets = detector.detect([frames[i] for i in idx])
        # sampled frames far apart: no tracking, the largest confident face of each frame
        dets = [d[d[:, 4] >= TrackOptions().min_score] if len(d) else d for d in dets]
        chosen = [max(d, key=lambda r: (r[2] - r[0]) * (r[3] - r[1])) if len(d) else None for d in dets]
        boxes = [None if b is None else to_int_box(pad_box(b, pads, info.width, info.height), info.width,
                                                   info.height) for b in chosen]
    keep = [k for k, b in enumerate(boxes) if b is not None]
    if not keep:
        raise NoFaceError(f"no face found in the {len(idx)} frame(s) of {video} that were inspected",
                          "give the face position with --box X1 Y1 X2 Y2")
    idx = [idx[k] for k in keep]
    kept_boxes = [boxes[k] for k in keep]
    crops = np.stack([crop_face(frames[i], b) for i, b in zip(idx, kept_boxes, strict=True)])  # (N,96,96,3)
    faces = prepare_batch(crops)  # (N, 6, 96, 96)
    mels = mel_windows(mel, mel_start(idx, rate, lead=lead, n_mel=mel.shape[1]))[:, None]  # (N, 1, 80, 16)
    return FaceSample(faces, np.ascontiguousarray(mels, dtype=np.float32), idx, kept_boxes)


def attention_names(model) -> list[str]:
    """The attention points a generator can record, in forward order; BadOption if it has none."""
    names = getattr(model, "attention_names", None)
    if names is None:
        raise BadOption(f"the {getattr(model, 'arch', type(model).__name__)} generator has no attention maps",
                        "use an attn_wav2lip or lpips_attn_wav2lip checkpoint")
    return list(names())


def default_blocks(names: Sequence[str], sizes: dict[str, int]) -> list[str]:
    """Up to four informative blocks: the first encoder map, the last encoder map of >= 24 px, the last
    decoder map of <= 48 px and the last decoder map. ``sizes``: map side in px per name."""
    enc = [n for n in names if n.startswith("enc")]
    dec = [n for n in names if n.startswith("dec")]
    pick = [enc[0] if enc else None,
            next((n for n in reversed(enc) if sizes[n] >= 24), None),
            next((n for n in reversed(dec) if sizes[n] <= 48), None),
            dec[-1] if dec else None]
    out: list[str] = []
    for n in pick:
        if n is not None and n not in out:
            out.append(n)
    return out


def _label(img: np.ndarray, text: str) -> None:
    import cv2

    cv2.putText(img, text, (3, HEADER - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)


def render_attention_grid(model, faces, mels, blocks: Sequence[str] | None = None, *, cell: int = CELL,
                          alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Spatial attention maps of ``blocks`` overlaid on the faces: an (H, W, 3) uint8 BGR image.

    faces (N, 6, 96, 96) and mels (N, 1, 80, 16), numpy or torch, float in the generator's ranges; the model
    is run once on its own device in eval mode without gradients. Rows = faces; columns = the input face
    (reference channels) followed by one overlay per block, labelled with the block name and map size.
    ``blocks`` None picks :func:`default_blocks`. Each map is normalised to its own min..max.
    """
    import cv2
    import torch
    import torch.nn.functional as F

    names = attention_names(model)
    if blocks is not None:
        unknown = [b for b in blocks if b not in names]
        if unknown:
            raise BadOption(f"unknown attention block(s) {', '.join(unknown)}",
                            f"choose from: {', '.join(names)}")
        if not blocks:
            raise BadOption("no attention block chosen", f"choose from: {', '.join(names)}")
    param = next(model.parameters())
    faces_t = torch.as_tensor(np.asarray(faces) if not torch.is_tensor(faces) else faces, dtype=torch.float32)
    mels_t = torch.as_tensor(np.asarray(mels) if not torch.is_tensor(mels) else mels, dtype=torch.float32)
    if faces_t.dim() != 4 or faces_t.shape[1:] != (6, FACE_SIZE, FACE_SIZE):
        raise BadOption(f"faces must be (N, 6, {FACE_SIZE}, {FACE_SIZE}), got {tuple(faces_t.shape)}")
    if mels_t.shape[0] != faces_t.shape[0]:
        raise BadOption(f"{mels_t.shape[0]} mel windows for {faces_t.shape[0]} faces")

    was_training, was_recording = model.training, getattr(model, "record_attention", False)
    model.eval()
    model.record_attention = True
    try:
        with torch.no_grad():
            model(mels_t.to(param.device), faces_t.to(param.device))
        maps = {k: v.float().cpu() for k, v in model.attention_maps.items()}
    finally:
        model.record_attention = was_recording
        model.train(was_training)
    sizes = {k: int(v.shape[-1]) for k, v in maps.items()}
    chosen = list(blocks) if blocks is not None else default_blocks(names, sizes)

    n = faces_t.shape[0]
    ref = (faces_t[:, 3:6].permute(0, 2, 3, 1).numpy() * 255.0).clip(0, 255).astype(np.uint8)  # (N,96,96,3)
    cols = 1 + len(chosen)
    grid = np.zeros((HEADER + n * cell, cols * cell, 3), dtype=np.uint8)
    heads = ["input"] + [f"{b} {sizes[b]}px" for b in chosen]
    for c, text in enumerate(heads):
        strip = grid[:HEADER, c * cell:(c + 1) * cell]
        _label(strip, text)
    for r in range(n):
        face = cv2.resize(ref[r], (cell, cell), interpolation=cv2.INTER_CUBIC)
        y = HEADER + r * cell
        grid[y:y + cell, :cell] = face
        for c, b in enumerate(chosen, start=1):
            m = F.interpolate(maps[b][r:r + 1], size=(cell, cell), mode="bilinear", align_corners=False)[0, 0]
            lo, hi = float(m.min()), float(m.max())
            norm = ((m - lo) / (hi - lo)).numpy() if hi - lo > 1e-12 else np.zeros((cell, cell), np.float32)
            heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
            grid[y:y + cell, c * cell:(c + 1) * cell] = cv2.addWeighted(face, 1 - alpha, heat, alpha, 0)
    return grid


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a BGR uint8 image as PNG atomically (temporary file beside ``path``, then rename)."""
    import cv2

    path = Path(path)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise EncodeError(f"could not encode a {image.shape} image as PNG")
    from lipsync_cli.files import atomic_write

    return atomic_write(path, buf.tobytes())
