"""The seam between the dub engine (``render._EngineRun``) and a generator family: where a face goes from the frame
to the network and back.

An adapter answers four questions for the engine's stages, for one face ``box`` of output frame ``i``:

    prepare   crop(frame, box, i)       -> the network's face input (uint8, the family's size)
              features(voice, i)         -> the audio input of that frame (a torch tensor)
              silent                     -> the audio input of digital silence (``--silence hold``)
              collate(crops, features, boxes, mode)
                                         -> one batch of tensors (pinned for CUDA); ``boxes`` and the blend
                                            ``mode`` say which pixels of the faces will be read
    generate  generate(batch, gen)       -> (n, S, S, 3) uint8 faces; ``gen["batch"]`` the micro-batch
    blend     paste(frame, face, box, mode)  into the frame, in place
              region(box, frame)        -> (x1, y1, x2, y2): the only pixels ``paste`` may change

:class:`Wav2LipAdapter` is the Wav2Lip family (wav2lip, attn_wav2lip, lpips_attn_wav2lip): 96 px crops of the
detector box, mel windows, ``render.generate``, ``blend.blend``: exactly the code the engine ran before this seam
existed (same functions, same arithmetic). MuseTalk's is ``lipsync_cli.musetalk_dub.MuseTalkAdapter``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipsync_cli import blend as blending
from lipsync_cli.constants import MEL_WINDOW
from lipsync_cli.device import device_type


@dataclass
class Wav2LipAdapter:
    """The Wav2Lip family: 96x96 crops of the box, (80, 16) mel windows, the whole box blended back."""

    model: object
    device: str
    precision: str
    mel_ts: list  # one (80, T) float32 tensor per voice
    starts: np.ndarray  # mel window start of each output frame
    silent: object = None  # (80, 16) float32 tensor: the mel window of digital silence

    def crop(self, frame: np.ndarray, box, i: int) -> np.ndarray:
        return blending.crop_face(frame, box)  # (96, 96, 3) uint8

    def features(self, voice: int, i: int):
        s = self.starts[i]
        return self.mel_ts[voice][:, s:s + MEL_WINDOW]  # (80, 16)

    def collate(self, crops: list, features: list, boxes: list, mode: str):
        import torch

        out = torch.from_numpy(np.stack(crops)), torch.stack(features).unsqueeze(1)  # (n, 96, 96, 3), (n, 1, 80, 16)
        if device_type(self.device) == "cuda":  # page-locked: the upload is a DMA that overlaps compute
            out = out[0].pin_memory(), out[1].pin_memory()
        # the rows of the faces that the blend of these boxes reads: the generator computes no others
        return (*out, min(blending.first_row_read(box, mode) for box in boxes))

    def generate(self, batch, gen: dict) -> np.ndarray:
        from lipsync_cli.render import generate

        crops, mels, first_row = batch
        return generate(self.model, mels, crops, self.device, self.precision, gen, first_row)

    def paste(self, frame: np.ndarray, face: np.ndarray, box, mode: str) -> None:
        blending.blend(frame, face, box, mode)

    def region(self, box, frame: np.ndarray):
        return box
