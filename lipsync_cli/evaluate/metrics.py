"""Image metrics of the papers' reconstruction setting: PSNR, SSIM, LPIPS, and FID over mouth crops.

All functions take BGR uint8 images of equal size (as frames come out of the pipeline). PSNR and SSIM follow
their usual definitions (SSIM: Wang et al. 2004, 11x11 Gaussian window sigma 1.5, K1 0.01, K2 0.03, computed
per
colour channel over the 'valid' region and averaged). LPIPS (Zhang et al. 2018, AlexNet, v0.1) and FID (Heusel
et al. 2017, Inception-v3 pool features, 2048-d) need pretrained weights that are never downloaded here:
they are
used when present locally, otherwise the metric is reported as unavailable.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lipsync_cli.errors import BadOption, WeightsNotFound

SSIM_SIGMA = 1.5
SSIM_WIN = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet, used by LPIPS
INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"  # torchvision's ImageNet Inception-v3
FID_SIZE = 299  # Inception input side, px


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise BadOption(f"images differ in size: {a.shape} vs {b.shape}")


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    _check_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


def _gaussian_window(size: int = SSIM_WIN, sigma: float = SSIM_SIGMA) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def _filter_valid(img: np.ndarray, win: np.ndarray) -> np.ndarray:
    import cv2

    h = win.shape[0] // 2
    out = cv2.filter2D(img, cv2.CV_64F, win, borderType=cv2.BORDER_REFLECT)
    return out[h:-h, h:-h] if h else out


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Structural similarity in [-1, 1] (1 for identical images); images at least 11x11."""
    _check_pair(a, b)
    if min(a.shape[:2]) < SSIM_WIN:
        raise BadOption(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN} px, got {a.shape[:2]}")
    win = _gaussian_window()
    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    a3 = a.reshape(*a.shape[:2], -1).astype(np.float64)
    b3 = b.reshape(*b.shape[:2], -1).astype(np.float64)
    vals = []
    for c in range(a3.shape[2]):
        x, y = a3[..., c], b3[..., c]
        mx, my = _filter_valid(x, win), _filter_valid(y, win)
        sxx = _filter_valid(x * x, win) - mx * mx
        syy = _filter_valid(y * y, win) - my * my
        sxy = _filter_valid(x * y, win) - mx * my
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(float(m.mean()))
    return float(np.mean(vals))


def _hub_file(name: str) -> Path | None:
    import torch

    p = Path(torch.hub.get_dir()) / "checkpoints" / name
    return p if p.is_file() else None


class LPIPSMetric:
    """LPIPS distance (lower: more alike) with the AlexNet backbone; only when its ImageNet weights are local.

    The linear calibration layers ship inside the ``lpips`` package; the backbone is torchvision's AlexNet, the
    registry file ``lpips-alex`` (``alexnet-owt-7be5be79.pth``), found like every weight file (our weights
    folders, then the torch hub cache ``{torch.hub.get_dir()}/checkpoints``) and never downloaded here: without
    it, WeightsNotFound names ``lipsync weights download lpips-alex``.
    """

    def __init__(self, device: str = "cpu"):
        from lipsync_cli.train.losses import make_lpips

        self.device = device
        self.net = make_lpips("alex", True, device, download=False)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        import torch

        _check_pair(a, b)

        def prep(img):  # BGR uint8 (H, W, 3) -> RGB (1, 3, H, W) in [-1, 1]
            t = torch.from_numpy(np.ascontiguousarray(img[..., ::-1])).float().permute(2, 0, 1)[None]
            return (t / 127.5 - 1.0).to(self.device)

        with torch.no_grad():
            return float(self.net(prep(a), prep(b)).flatten()[0])


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        off = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + off) @ (sigma2 + off))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def find_inception(explicit: str | os.PathLike | None = None) -> Path | None:
    """Inception-v3 weights: ``explicit``, else torchvision's file in the torch hub cache, else None."""
    if explicit is not None:
        p = Path(explicit)
        if not p.is_file():
            raise WeightsNotFound(f"Inception weights not found: {p}")
        return p
    return _hub_file(INCEPTION_FILE)


class InceptionFeatures:
    """2048-d pool features of torchvision's Inception-v3 (ImageNet weights from a local file).

    The file must hold exactly torchvision's tensors (``inception_v3_google-0cc3c7bd.pth``): a missing, extra or
    misshapen one raises CheckpointMismatch, since a partly random network would give an FID that looks real.
    """

    def __init__(self, weights: str | os.PathLike, device: str = "cpu"):
        import torch
        from torchvision.models import inception_v3

        from lipsync_cli.checkpoint_io import load_file, unwrap_state_dict

        net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        sd = unwrap_state_dict(load_file(weights))
        _load_strict(net, sd, weights)
        net.fc = torch.nn.Identity()
        self.net = net.to(device).eval()
        self.device = device

    def __call__(self, images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """(N, 2048) features of BGR uint8 images (resized to 299x299, ImageNet normalisation)."""
        import cv2
        import torch

        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        out = []
        with torch.no_grad():
            for s in range(0, len(images), batch_size):
                batch = np.stack(
                    [
                        cv2.resize(im, (FID_SIZE, FID_SIZE), interpolation=cv2.INTER_LINEAR)[..., ::-1]
                        for im in images[s : s + batch_size]
                    ]
                )  # (b, 299, 299, 3) RGB
                x = torch.from_numpy(np.ascontiguousarray(batch)).float().permute(0, 3, 1, 2) / 255.0
                x = ((x - mean) / std).to(self.device)  # (b, 3, 299, 299)
                out.append(self.net(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 2048))


def _load_strict(net, sd: dict, path) -> None:
    """Load ``sd`` into ``net`` requiring every tensor with its shape (BatchNorm's ``num_batches_tracked``
    counters, absent from older files and unused in eval mode, excepted); one-line CheckpointMismatch otherwise."""
    from lipsync_cli.errors import CheckpointMismatch

    what = f"{path} does not fit torchvision's Inception-v3"
    hint = f"pass torchvision's ImageNet Inception-v3 weights ({INCEPTION_FILE})"
    try:
        res = net.load_state_dict(sd, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise CheckpointMismatch(f"{what}: {(lines[1] if len(lines) > 1 else lines[0])[:200]}", hint) from None
    missing = [k for k in res.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or res.unexpected_keys:
        raise CheckpointMismatch(
            f"{what}: {len(missing)} missing tensors" + (f" (e.g. {missing[0]})" if missing else "")
            + f", {len(res.unexpected_keys)} unexpected"
            + (f" (e.g. {res.unexpected_keys[0]})" if res.unexpected_keys else ""), hint)


def fid(real: list[np.ndarray], fake: list[np.ndarray], features: InceptionFeatures) -> float:
    """Fréchet Inception Distance between two sets of images (at least 2 of each)."""
    if len(real) < 2 or len(fake) < 2:
        raise BadOption("FID needs at least 2 images per set")
    fr, ff = features(real).astype(np.float64), features(fake).astype(np.float64)
    return frechet_distance(fr.mean(0), np.cov(fr, rowvar=False), ff.mean(0), np.cov(ff, rowvar=False))


def mouth_crop(face: np.ndarray) -> np.ndarray:
    """The lower half of a face crop (where the generator redraws the mouth)."""
    return face[face.shape[0] // 2 :]
