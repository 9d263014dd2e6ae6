"""Face restorers: aligned BGR uint8 faces in, restored BGR uint8 faces out, in batches.

Every restorer has ``size`` (the side of the aligned crop it takes, px) and ``restore(faces)`` with faces
(B, size, size, 3) uint8 BGR. Two kinds:

* :class:`TorchGFPGAN`: our GFPGAN v1.4 (``models.gfpgan``) on a torch device, batched, fixed or random noise.
* :class:`OnnxRestorer`: a restorer the user brings as ONNX in the layout facefusion and others publish (GFPGAN,
  CodeFormer, GPEN-BFR 256/512, RestoreFormer++): one (1 or B, 3, N, N) RGB input in [-1, 1], N and the input
  names read from the model; CodeFormer's second input (its fidelity weight ``w``) is filled with
  :data:`CODEFORMER_FIDELITY`. onnxruntime, with the CUDA provider on a GPU when it is installed.

The network input is GFPGANer's: BGR -> RGB, ``(x / 255 - 0.5) / 0.5``; the output is clamped to [-1, 1] and
mapped back with ``(x + 1) / 2 * 255``, rounded (basicsr's ``tensor2img``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from lipsync_cli.errors import BadOption, CheckpointError, CheckpointMismatch, InputNotFound

log = logging.getLogger(__name__)

CODEFORMER_FIDELITY = 0.5  # CodeFormer's w: 0 = most restored, 1 = most faithful to the input (its default 0.5)
DEFAULT_ONNX_SIZE = 512  # when a model leaves its input size symbolic


class Restorer(Protocol):
    size: int

    def restore(self, faces: np.ndarray) -> np.ndarray: ...


def to_input(faces: np.ndarray) -> np.ndarray:
    """(B, S, S, 3) uint8 BGR -> (B, 3, S, S) float32 RGB in [-1, 1]."""
    rgb = faces[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray((rgb - np.float32(0.5)) / np.float32(0.5))


def from_output(out: np.ndarray) -> np.ndarray:
    """(B, 3, S, S) RGB about [-1, 1] -> (B, S, S, 3) uint8 BGR."""
    x = (np.clip(out.astype(np.float32), -1.0, 1.0) + 1.0) / 2.0 * 255.0
    return np.ascontiguousarray(np.round(x).astype(np.uint8).transpose(0, 2, 3, 1)[..., ::-1])


class TorchGFPGAN:
    """GFPGAN v1.4 on a torch device. ``batch``: faces per forward pass (halved for good on out-of-memory);
    ``noise``: "fixed" (the stored buffers, deterministic) or "random" (fresh per call, as GFPGANer)."""

    def __init__(self, net, device: str = "cpu", precision: str = "fp32", batch: int = 4, noise: str = "fixed"):
        self.net = net.eval().to(device)
        self.size = int(net.out_size)
        self.device = device
        self.precision = precision
        self.state = {"batch": max(1, int(batch))}
        self.noise = noise

    def restore(self, faces: np.ndarray) -> np.ndarray:
        import torch

        from lipsync_cli.device import autocast, empty_cache, is_out_of_memory

        x = torch.from_numpy(to_input(faces))  # (B, 3, S, S)
        out: list[np.ndarray] = []
        k = 0
        while k < len(x):
            b = self.state["batch"]
            try:
                with torch.inference_mode(), autocast(self.device, self.precision):
                    y = self.net(x[k:k + b].to(self.device), noise=self.noise)
                out.append(y.float().cpu().numpy())
                k += b
            except (RuntimeError, MemoryError) as err:
                if not is_out_of_memory(err) or b == 1:
                    raise
                empty_cache(self.device)
                self.state["batch"] = b // 2
                log.warning("out of %s memory in the face restorer at batch %d; using %d", self.device, b, b // 2)
        return from_output(np.concatenate(out))


class OnnxRestorer:
    """An ONNX face restorer (see the module doc). ``fidelity``: the value given to a second, scalar input
    (CodeFormer's ``w``); ``threads``: onnxruntime intra-op threads on the CPU."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", fidelity: float = CODEFORMER_FIDELITY,
                 threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        from lipsync_cli.faces.scrfd import check_session_providers, session_settings

        opts, providers = session_settings(device, threads)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as err:  # onnxruntime raises its own classes for every kind of bad file
            first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise CheckpointError(f"cannot load ONNX face restorer {self.path}: {first}",
                                  "pass a GFPGAN / CodeFormer / GPEN / RestoreFormer++ .onnx file") from None
        check_session_providers(self.session, providers, "the ONNX face restorer")
        images = [i for i in self.session.get_inputs() if len(i.shape) == 4]
        if len(images) != 1 or (isinstance(images[0].shape[1], int) and images[0].shape[1] != 3):
            raise CheckpointMismatch(
                f"{self.path} is not a face restorer in the published layout (one 1x3xNxN image input)",
                "pass a restorer exported with a (1, 3, N, N) RGB input in [-1, 1]")
        image = images[0]
        self.input_name = image.name
        n = image.shape[2] if isinstance(image.shape[2], int) else image.shape[3]
        self.size = int(n) if isinstance(n, int) and n > 0 else DEFAULT_ONNX_SIZE
        self.batched = not isinstance(image.shape[0], int) or image.shape[0] != 1
        self.extra: dict[str, np.ndarray] = {}
        for inp in self.session.get_inputs():
            if inp.name == self.input_name:
                continue
            if len(inp.shape) > 1:
                raise CheckpointMismatch(f"{self.path} has a second image-like input {inp.name!r} {inp.shape}",
                                         "pass a restorer with one image input (and at most a scalar weight)")
            dtype = np.float64 if "double" in inp.type else np.float32
            self.extra[inp.name] = np.array([fidelity] if inp.shape else fidelity, dtype=dtype)
        self.output_name = self.session.get_outputs()[0].name

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: x, **self.extra})[0]
        if out.ndim != 4 or out.shape[1] != 3:
            raise CheckpointMismatch(f"{self.path} returned {out.shape}, not (B, 3, N, N)",
                                     "pass a face restorer in the published layout")
        return out

    def restore(self, faces: np.ndarray) -> np.ndarray:
        x = to_input(faces)
        if self.batched:
            out = self._run(x)
        else:
            out = np.concatenate([self._run(x[k:k + 1]) for k in range(len(x))])
        if out.shape[2:] != x.shape[2:]:  # some exports restore at another size (e.g. 2x): back to the crop
            import cv2

            out = np.stack([cv2.resize(o.transpose(1, 2, 0), (self.size, self.size),
                                       interpolation=cv2.INTER_AREA).transpose(2, 0, 1) for o in out])
        return from_output(out)


def load_restorer(path: str | os.PathLike, device: str = "cpu", precision: str = "fp32", noise: str = "fixed",
                  batch: int = 4) -> Restorer:
    """A restorer from a file: ``.onnx`` -> :class:`OnnxRestorer`; anything else is read as a GFPGANv1.4-format
    weight file (``weights_only=True``) -> :class:`TorchGFPGAN`."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"enhancer weights not found: {path}",
                            "give a GFPGANv1.4 .pth or an ONNX restorer, or leave out --enhancer-weights")
    if path.suffix.lower() == ".onnx":
        if noise != "fixed":
            raise BadOption("--enhance-noise random needs the GFPGAN .pth (an ONNX restorer has its noise built in)")
        return OnnxRestorer(path, device)
    from lipsync_cli.models.gfpgan import load_gfpgan

    return TorchGFPGAN(load_gfpgan(path, "cpu"), device, precision, batch, noise)
