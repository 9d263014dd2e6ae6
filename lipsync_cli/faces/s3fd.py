"""S3FD (Zhang et al. 2017), the face detector Wav2Lip ships with; loads the released ``s3fd.pth`` as is.

The network keeps the upstream layer names (``conv1_1`` ... ``conv7_2``, ``conv3_3_norm`` ...) so the released
state dict loads with ``strict=True``. Post-processing follows Wav2Lip's ``face_detection/detection/sfd``
numerically (softmax, one square anchor of side 4*stride per cell, SSD decoding with variances (0.1, 0.2), NMS
0.3 with the "+1 pixel" area convention, final score > 0.5) but is vectorised over anchors and frames, and
caps the number of candidates that reach NMS so a frame full of weak responses cannot stall it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipsync_cli.errors import BadOption
from lipsync_cli.faces.boxes import nms

log = logging.getLogger(__name__)

# Mean subtracted from RGB input pixels (Caffe VGG16 convention, applied after BGR->RGB as upstream does).
S3FD_MEAN_RGB = (104.0, 117.0, 123.0)
S3FD_STRIDES = (4, 8, 16, 32, 64, 128)  # pixels per feature cell of the six detection heads
S3FD_ANCHOR_SCALE = 4  # anchor side = 4 * stride pixels (16 ... 512)
S3FD_VARIANCES = (0.1, 0.2)  # SSD box-coding variances (centre, size)


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (``weight``), as in SSD."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = 1e-10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps  # (B, 1, H, W)
        return x / norm * self.weight.view(1, -1, 1, 1)


class S3FD(nn.Module):
    """VGG16-based single-shot detector. ``forward`` returns the 12 raw head outputs
    ``[cls1, reg1, ..., cls6, reg6]``: cls (B, 2, H/s, W/s) logits [background, face],
    reg (B, 4, H/s, W/s) box offsets."""

    def __init__(self):
        super().__init__()

        def conv(cin: int, cout: int, k: int = 3, s: int = 1, p: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, kernel_size=k, stride=s, padding=p)

        self.conv1_1, self.conv1_2 = conv(3, 64), conv(64, 64)
        self.conv2_1, self.conv2_2 = conv(64, 128), conv(128, 128)
        self.conv3_1, self.conv3_2, self.conv3_3 = conv(128, 256), conv(256, 256), conv(256, 256)
        self.conv4_1, self.conv4_2, self.conv4_3 = conv(256, 512), conv(512, 512), conv(512, 512)
        self.conv5_1, self.conv5_2, self.conv5_3 = conv(512, 512), conv(512, 512), conv(512, 512)
        # fc6 is padded by 3 without dilation in the released model: it grows the map by 4 cells each way
        self.fc6 = conv(512, 1024, 3, 1, 3)
        self.fc7 = conv(1024, 1024, 1, 1, 0)
        self.conv6_1, self.conv6_2 = conv(1024, 256, 1, 1, 0), conv(256, 512, 3, 2, 1)
        self.conv7_1, self.conv7_2 = conv(512, 128, 1, 1, 0), conv(128, 256, 3, 2, 1)

        self.conv3_3_norm = L2Norm(256, scale=10)
        self.conv4_3_norm = L2Norm(512, scale=8)
        self.conv5_3_norm = L2Norm(512, scale=5)

        # the stride-4 head predicts 3 background logits + 1 face logit ("max-out background")
        self.conv3_3_norm_mbox_conf, self.conv3_3_norm_mbox_loc = conv(256, 4), conv(256, 4)
        self.conv4_3_norm_mbox_conf, self.conv4_3_norm_mbox_loc = conv(512, 2), conv(512, 4)
        self.conv5_3_norm_mbox_conf, self.conv5_3_norm_mbox_loc = conv(512, 2), conv(512, 4)
        self.fc7_mbox_conf, self.fc7_mbox_loc = conv(1024, 2), conv(1024, 4)
        self.conv6_2_mbox_conf, self.conv6_2_mbox_loc = conv(512, 2), conv(512, 4)
        self.conv7_2_mbox_conf, self.conv7_2_mbox_loc = conv(256, 2), conv(256, 4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # x: (B, 3, H, W) RGB minus S3FD_MEAN_RGB
        h = F.relu(self.conv1_2(F.relu(self.conv1_1(x))))
        h = F.max_pool2d(h, 2, 2)  # (B, 64, H/2, W/2)
        h = F.relu(self.conv2_2(F.relu(self.conv2_1(h))))
        h = F.max_pool2d(h, 2, 2)
        h = F.relu(self.conv3_3(F.relu(self.conv3_2(F.relu(self.conv3_1(h))))))
        f3_3 = h  # (B, 256, H/4, W/4)
        h = F.max_pool2d(h, 2, 2)
        h = F.relu(self.conv4_3(F.relu(self.conv4_2(F.relu(self.conv4_1(h))))))
        f4_3 = h  # (B, 512, H/8, W/8)
        h = F.max_pool2d(h, 2, 2)
        h = F.relu(self.conv5_3(F.relu(self.conv5_2(F.relu(self.conv5_1(h))))))
        f5_3 = h  # (B, 512, H/16, W/16)
        h = F.max_pool2d(h, 2, 2)
        h = F.relu(self.fc7(F.relu(self.fc6(h))))
        ffc7 = h  # (B, 1024, H/32 + 4, W/32 + 4)
        h = F.relu(self.conv6_2(F.relu(self.conv6_1(h))))
        f6_2 = h
        h = F.relu(self.conv7_2(F.relu(self.conv7_1(h))))
        f7_2 = h

        f3_3, f4_3, f5_3 = self.conv3_3_norm(f3_3), self.conv4_3_norm(f4_3), self.conv5_3_norm(f5_3)
        cls1 = self.conv3_3_norm_mbox_conf(f3_3)  # (B, 4, H/4, W/4)
        bg = cls1[:, 0:3].max(dim=1, keepdim=True).values
        cls1 = torch.cat([bg, cls1[:, 3:4]], dim=1)  # (B, 2, H/4, W/4)
        return [
            cls1, self.conv3_3_norm_mbox_loc(f3_3),
            self.conv4_3_norm_mbox_conf(f4_3), self.conv4_3_norm_mbox_loc(f4_3),
            self.conv5_3_norm_mbox_conf(f5_3), self.conv5_3_norm_mbox_loc(f5_3),
            self.fc7_mbox_conf(ffc7), self.fc7_mbox_loc(ffc7),
            self.conv6_2_mbox_conf(f6_2), self.conv6_2_mbox_loc(f6_2),
            self.conv7_2_mbox_conf(f7_2), self.conv7_2_mbox_loc(f7_2),
        ]


def load_s3fd(path: str | os.PathLike, device: str | torch.device = "cpu") -> S3FD:
    """Load a released ``s3fd.pth`` (plain state dict) or our re-save of one; eval mode, on ``device``.

    Raises InputNotFound / CheckpointError (unreadable or unsafe file) / CheckpointMismatch (another kind of
    network, or keys/shapes that do not fit)."""
    from lipsync_cli.checkpoint import load_network

    return load_network(path, S3FD(), "s3fd", "pass the released s3fd.pth").to(device).eval()


def preprocess(frames: np.ndarray | list[np.ndarray], device: str | torch.device = "cpu") -> torch.Tensor:
    """BGR uint8 frames (B, H, W, 3) -> the network input (B, 3, H, W) float32: RGB minus S3FD_MEAN_RGB."""
    arr = np.stack(frames) if isinstance(frames, list) else np.asarray(frames)
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(device)  # (B, H, W, 3) uint8 BGR
    x = x.flip(-1).float() - torch.tensor(S3FD_MEAN_RGB, device=x.device)  # (B, H, W, 3) RGB
    return x.permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)


def decode(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Every anchor of every head as a box: the 12 raw outputs -> (B, A, 5) [x1, y1, x2, y2, face score].

    Anchors are ordered head by head, row-major within a head (upstream's candidate order). Pixel units of the
    network input. Always float32, whatever the outputs' dtype: a network run in bf16 would otherwise get anchors
    and offsets rounded to bf16's 2-4 px steps at the coordinates of a 640 px frame."""
    dets = []
    for level, stride in enumerate(S3FD_STRIDES):
        cls, reg = outputs[2 * level].float(), outputs[2 * level + 1].float()  # (B, 2, h, w), (B, 4, h, w)
        b, _, hh, ww = cls.shape
        score = F.softmax(cls, dim=1)[:, 1].reshape(b, -1)  # (B, h*w)
        loc = reg.permute(0, 2, 3, 1).reshape(b, -1, 4)  # (B, h*w, 4)
        ys, xs = torch.meshgrid(torch.arange(hh, device=cls.device), torch.arange(ww, device=cls.device),
                                indexing="ij")
        centres = torch.stack([xs, ys], dim=-1).reshape(-1, 2).to(loc.dtype) * stride + stride / 2  # (h*w, 2)
        side = float(S3FD_ANCHOR_SCALE * stride)
        cxy = centres + loc[..., :2] * S3FD_VARIANCES[0] * side  # (B, h*w, 2)
        wh = side * torch.exp(loc[..., 2:] * S3FD_VARIANCES[1])
        xy1 = cxy - wh / 2
        dets.append(torch.cat([xy1, xy1 + wh, score[..., None]], dim=-1))  # (B, h*w, 5)
    return torch.cat(dets, dim=1)


@dataclass(frozen=True)
class S3FDOptions:
    """Post-processing settings (Wav2Lip's values by default).

    candidate_threshold: face probability an anchor needs to enter NMS.
    nms_threshold: IoU above which a lower-scored box is dropped.
    score_threshold: face probability a box needs to be reported.
    max_candidates: at most this many candidates (best scores first) per frame enter NMS; upstream has no cap.
    """

    candidate_threshold: float = 0.05
    nms_threshold: float = 0.3
    score_threshold: float = 0.5
    max_candidates: int = 750

    def __post_init__(self):
        if self.max_candidates < 1:
            raise BadOption(f"max_candidates must be >= 1, got {self.max_candidates}")


def postprocess(outputs: list[torch.Tensor], options: S3FDOptions = S3FDOptions()) -> list[np.ndarray]:
    """The 12 raw head outputs of a batch -> per frame an (N, 5) float32 array [x1, y1, x2, y2, score] sorted
    by score descending, in network-input pixels ((0, 5) when no face). The outputs may be in any precision (a
    network run under autocast); decoding and NMS are float32 (float64 inside NMS) in every case."""
    with torch.autocast(outputs[0].device.type, enabled=False):
        dets = decode(outputs)  # (B, A, 5) float32
    results = []
    for frame_dets in dets:
        cand = frame_dets[frame_dets[:, 4] > options.candidate_threshold]  # (C, 5)
        if len(cand) > options.max_candidates:
            cand = cand[torch.topk(cand[:, 4], options.max_candidates).indices]
        cand = cand.cpu().numpy()
        kept = cand[nms(cand, options.nms_threshold)]
        kept = kept[kept[:, 4] > options.score_threshold]
        results.append(np.ascontiguousarray(kept, dtype=np.float32).reshape(-1, 5))
    return results


class S3FDDetector:
    """FaceDetector backend: batched S3FD inference + vectorised post-processing, at the frames' own size.

    The network runs in whatever precision the caller's autocast context chooses (``dub`` runs detection under
    the generator's); the boxes are decoded in float32 regardless."""

    name = "s3fd"

    def __init__(self, net: S3FD, device: str = "cpu", options: S3FDOptions = S3FDOptions()):
        self.net = net.to(device).eval()
        self.device = device
        self.options = options

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str = "cpu",
                  options: S3FDOptions = S3FDOptions()) -> S3FDDetector:
        return cls(load_s3fd(path, device), device, options)

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """BGR uint8 frames of one size -> per frame (N, 5) [x1, y1, x2, y2, score] in their pixels."""
        if not frames:
            return []
        with torch.inference_mode():
            outputs = self.net(preprocess(frames, self.device))
            return postprocess(outputs, self.options)
