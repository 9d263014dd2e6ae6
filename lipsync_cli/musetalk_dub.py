"""MuseTalk 1.5 in ``lipsync dub --arch musetalk``: its files from the weights registry, and its adapter for the dub
engine (the seam of ``lipsync_cli.generator_adapter``). The networks are ``lipsync_cli.models.musetalk``.

Where a face goes, per output frame ``i`` and face ``box`` (our detector's smoothed, padded box of the track):

    prepare   box -> MuseTalk's crop box (:func:`crop_box`) -> frame[y1:y2, x1:x2] resized to 256x256 (Lanczos,
              as upstream; not square, so the aspect changes as upstream's does); the audio input is the
              whisper window of frame i of the face's voice (computed once for the whole audio at start-up)
    generate  VAE-encode the lower-half-masked crop and the crop itself (the reference is the same frame's
              crop, as upstream) -> UNet at t=0 -> VAE decode, in micro-batches; for a still image or a looped
              video the latents of each (source frame, box) are encoded once and reused
    blend     the 256 px face resized back into the crop box and blended through our feather mask (the lower
              face of the crop box, soft edges: ``blend.mouth_mask``), or pasted whole (``--blend paste``)

What differs from upstream (scripts/inference.py, v1.5):

* The box. Upstream takes DWPose's 68 face landmarks: x from the leftmost to the rightmost point, the bottom at
  the chin, the top as far above landmark 29 (the nose) as the chin is below it, ``bbox_shift`` moving that
  centre, then 10 px more below the chin. We have no landmarks, only the face detector's box (S3FD or SCRFD,
  with ``--pads``, smoothed over time): its sides stand for the outermost landmarks, its bottom for the chin and
  its vertical centre for landmark 29, and the same rule (``models.musetalk.face_box``) makes the crop. With
  ``bbox_shift`` 0 that is the detector box with 10 px more below it; ``--bbox-shift N`` moves its top by 2N px
  (down for N > 0), as upstream's moves its centre point by N.
* The paste mask. Upstream blends through a BiSeNet face-parsing mask (a further weight set, not in the
  registry) restricted to the lower half of a 1.5x square around the box; we blend through the feather mask of
  the other generators over the crop box (or paste it whole with ``--blend paste``).
* Frames are not cycled ping-pong by MuseTalk's own rule: the engine's ``--loop`` gives the frames, as for every
  generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from lipsync_cli import blend as blending
from lipsync_cli.models import musetalk as mt

ARCH = "musetalk"
# the registry entries of ``lipsync weights download musetalk`` (lipsync_cli.weights.GROUPS["musetalk"])
UNET, CONFIG, VAE, WHISPER = "musetalk_unet", "musetalk_config", "sd_vae_ft_mse", "whisper_tiny"
FOLDER_PARTS = ("sd_vae_ft_mse_config", "whisper_tiny_config", "whisper_tiny_preprocessor")  # beside VAE, WHISPER
MICRO_BATCH_CPU = 4  # faces per VAE/UNet call on a CPU: a 256 px VAE decode of 16 holds several GB of activations
CACHE_BYTES = 256 << 20  # reference latents kept for a still image / looped video (32 KiB per face at fp32)


def is_musetalk(model) -> bool:
    return isinstance(model, mt.MuseTalk)


def load_dub_musetalk(options, device: str, notify: Callable[[str], None] | None = None, progress=None):
    """MuseTalk 1.5 from the seven registry files (found in the weights folders or the cache, or downloaded unless
    offline; missing offline: one line naming ``lipsync weights download musetalk``), in ``options.precision``
    as ``dub`` resolves it for ``device``."""
    from lipsync_cli.device import resolve_precision
    from lipsync_cli.dub import _resolve_weights

    paths = {name: _resolve_weights(name, options, progress, notify)
             for name in (UNET, CONFIG, VAE, WHISPER, *FOLDER_PARTS)}
    return mt.load_musetalk(paths[UNET], paths[CONFIG], paths[VAE].parent, paths[WHISPER].parent, device=device,
                            precision=resolve_precision(options.precision, device))


def crop_box(box: Sequence[int], frame_height: int, bbox_shift: int = 0) -> tuple[int, int, int, int]:
    """MuseTalk 1.5's crop ``(x1, y1, x2, y2)`` (pixels, exclusive ends) for our detector box: the box's sides,
    bottom and vertical centre stand for the outermost landmarks, the chin and landmark 29 of upstream's rule
    (``models.musetalk.face_box``: the top mirrored about the centre moved by ``bbox_shift``, 10 px added below,
    clamped to the frame). When the shift leaves no box, the detector box itself (upstream's fallback)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    points = np.zeros((68, 2), np.int32)  # only the extremes and point 29 matter to face_box
    points[:, 0], points[:, 1] = x1, y1
    points[1] = (x2, y1)
    points[8] = (x1, y2)  # the chin: the lowest point
    points[29] = (x1, (y1 + y2) // 2)
    return mt.face_box(points, frame_height, bbox_shift=bbox_shift, fallback=(x1, y1, x2, y2))


def crop_face(frame: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The crop box's pixels resized to 256x256 with Lanczos (upstream's), (256, 256, 3) uint8 BGR; from a uint16
    frame, the 8-bit value of the same colour (as ``blend.crop_face``)."""
    x1, y1, x2, y2 = box
    return blending.to_8bit(cv2.resize(frame[y1:y2, x1:x2], (mt.FACE_SIZE, mt.FACE_SIZE),
                                       interpolation=cv2.INTER_LANCZOS4))


@dataclass
class MuseTalkAdapter:
    """The dub engine's MuseTalk: see the module docstring. ``chunks``: one (n_out, 50, 384) float32 array of
    whisper windows per voice; ``src_of(i)``: the source frame of output frame ``i``, and ``reuse`` whether
    source frames repeat (a still image, a looped video), which turns on the reference-latent cache."""

    model: mt.MuseTalk
    chunks: list
    src_of: Callable[[int], int]
    reuse: bool = False
    bbox_shift: int = 0
    silent: object = None  # (50, 384) float32 tensor: the whisper window of digital silence (--silence hold)
    latents: dict = field(default_factory=dict)  # (source frame, box) -> (8, 32, 32) latents; set by generate
    asked: set = field(default_factory=set)  # keys whose crop prepare already sent (prepare's thread)
    encoded: int = 0  # faces VAE-encoded (fewer than generated when latents are reused)

    @classmethod
    def for_dub(cls, model: mt.MuseTalk, speech_wavs: list, fps: float, n_out: int, src_of: Callable[[int], int],
                reuse: bool, bbox_shift: int = 0, silence: bool = False) -> MuseTalkAdapter:
        """The adapter of one dub: whisper windows of each voice's 16 kHz track for its ``n_out`` frames (past the
        audio: zero windows, upstream's padding), and with ``silence`` the window of 1 s of digital silence."""
        import torch

        chunks = [model.audio_chunks(w, fps, n_out) for w in speech_wavs]  # (n_out, 50, 384) each
        silent = None
        if silence:
            quiet = model.audio_chunks(np.zeros(mt.SAMPLE_RATE, np.float32), fps)
            silent = torch.from_numpy(np.ascontiguousarray(quiet[len(quiet) // 2]))  # the middle: no padding in it
        return cls(model, chunks, src_of, reuse, bbox_shift, silent)

    # -- prepare ---------------------------------------------------------------------------------------------
    def box(self, box, frame: np.ndarray) -> tuple[int, int, int, int]:
        return crop_box(box, frame.shape[0], self.bbox_shift)

    region = box  # the paste changes the crop box only

    def crop(self, frame: np.ndarray, box, i: int):
        """(key, 256 px crop or None): None when the key's latents are (or are being) encoded already."""
        key = (self.src_of(i), tuple(int(v) for v in box)) if self.reuse else None
        if key is not None:
            if key in self.asked:
                return key, None
            if len(self.asked) * self._latent_bytes() < CACHE_BYTES:
                self.asked.add(key)
            else:
                key = None  # the cache is full: encode it again
        return key, crop_face(frame, self.box(box, frame))

    def _latent_bytes(self) -> int:
        return 2 * mt.LATENT_CHANNELS * mt.LATENT_SIZE ** 2 * 4

    def features(self, voice: int, i: int):
        import torch

        return torch.from_numpy(self.chunks[voice][i])  # (50, 384)

    def collate(self, crops: list, features: list, boxes: list, mode: str):  # every pixel of a face is blended
        import torch

        return crops, torch.stack(features)  # [(key, crop)], (n, 50, 384)

    # -- generate --------------------------------------------------------------------------------------------
    def generate(self, batch, gen: dict) -> np.ndarray:
        """The (n, 256, 256, 3) uint8 BGR faces of a collated batch, in micro-batches of ``gen["batch"]`` (at most
        MICRO_BATCH_CPU on a CPU), halved for good on a device out-of-memory error."""
        import torch

        from lipsync_cli.device import device_type, in_micro_batches

        entries, chunks = batch
        device = str(self.model.device)
        todo, first = [], set()  # the faces to encode: each key once (a held mouth may repeat its frame's crop)
        for k, (key, crop) in enumerate(entries):
            if crop is not None and (key is None or key not in first):
                todo.append(k)
                first.add(key)
        fresh: dict[int, object] = {}
        out = np.empty((len(entries), mt.FACE_SIZE, mt.FACE_SIZE, 3), np.uint8)

        cap = MICRO_BATCH_CPU if device_type(device) == "cpu" else None

        def step(fn, n):  # fn(start, stop) over range(n) in micro-batches, with the out-of-memory rule
            in_micro_batches(fn, n, gen, device, cap)

        def encode(a, z):
            faces = np.stack([entries[k][1] for k in todo[a:z]])  # (b, 256, 256, 3)
            for k, lat in zip(todo[a:z], self.model.encode_reference(faces)):
                fresh[k] = lat

        step(encode, len(todo))
        self.encoded += len(todo)
        for k, (key, _) in enumerate(entries):  # the new latents kept for the frames that reuse them
            if key is not None and k in fresh:
                self.latents[key] = fresh[k]
        latents = [fresh[k] if k in fresh else self.latents[key] for k, (key, _) in enumerate(entries)]

        def run(a, z):
            out[a:z] = self.model.generate(torch.stack(latents[a:z]), chunks[a:z].numpy())

        step(run, len(entries))
        return out

    # -- blend -----------------------------------------------------------------------------------------------
    def paste(self, frame: np.ndarray, face: np.ndarray, box, mode: str) -> None:
        blending.blend(frame, face, self.box(box, frame), mode)
