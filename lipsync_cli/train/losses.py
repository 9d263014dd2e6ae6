"""Training losses (Wav2Lip): the expert's cosine-BCE, the generator's sync loss, the GAN and LPIPS terms.

Every loss is computed in float32 with autocast off: BCE on probabilities is not safe in half precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lipsync_cli.constants import SYNC_T


def _fp32(*xs: torch.Tensor) -> list[torch.Tensor]:
    return [x.float() for x in xs]


def cosine_bce(audio_emb: torch.Tensor, face_emb: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d): d = cosine similarity of the (B, 512) embeddings, loss = BCE(d, y) with y (B, 1) in {0, 1}.

    SyncNet_color's embeddings are ReLU outputs, so d is in [0, 1] and reads as P(in sync)."""
    with torch.autocast(device_type=audio_emb.device.type, enabled=False):
        a, v, y = _fp32(audio_emb, face_emb, y)
        d = F.cosine_similarity(a, v).clamp(1e-7, 1 - 1e-7)  # (B,)
        return F.binary_cross_entropy(d.unsqueeze(1), y.view(-1, 1)), d


def lower_half_stack(g: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) faces -> (B, 3T, H/2, W): the lower halves with frames stacked on channels
    (frame-major)."""
    g = g[:, :, :, g.size(3) // 2 :]
    return torch.cat([g[:, :, t] for t in range(g.size(2))], dim=1)


def sync_loss(expert: torch.nn.Module, mel: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The generator's sync loss: the frozen expert's BCE of (mel (B, 1, 80, 16), generated g
    (B, 3, T, 96, 96)) against "in sync". Gradients flow into ``g`` only (the caller freezes the expert)."""
    assert g.size(2) == SYNC_T, g.shape
    a, v = expert(mel, lower_half_stack(g))
    y = torch.ones(g.size(0), 1, device=g.device)
    return cosine_bce(a, v, y)[0]


def fold_time(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W), time-major within each sample (Wav2Lip's folding)."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def bce_prob(p: torch.Tensor, target: float) -> torch.Tensor:
    """BCE of probabilities ``p`` against a constant ``target`` (0 or 1), in float32."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        p = p.float().clamp(1e-7, 1 - 1e-7)
        return F.binary_cross_entropy(p, torch.full_like(p, target))


def lpips_loss(lpips_net: torch.nn.Module, g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean LPIPS distance of generated vs true faces (B, 3, T, 96, 96) BGR in [0, 1]; the ``lpips`` package
    wants RGB in [-1, 1], so channels are flipped and rescaled."""
    g2 = fold_time(g).flip(1) * 2 - 1  # (B*T, 3, 96, 96) RGB in [-1, 1]
    y2 = fold_time(y).flip(1) * 2 - 1
    with torch.autocast(device_type=g.device.type, enabled=False):
        return lpips_net(g2.float(), y2.float()).mean()


def make_lpips(net: str, pretrained: bool, device: torch.device) -> torch.nn.Module:
    """The LPIPS metric network, frozen and in eval mode. ``pretrained=False`` uses a random trunk (tests)."""
    import lpips

    from lipsync_cli.errors import WeightsNotFound

    try:
        m = lpips.LPIPS(net=net, pretrained=True, pnet_rand=not pretrained, verbose=False)
    except Exception as err:  # noqa: BLE001  torchvision fetches the ImageNet trunk on first use
        raise WeightsNotFound(
            f"cannot load the LPIPS {net} trunk: {str(err).splitlines()[0][:160]}",
            "torchvision downloads it into ~/.cache/torch/hub/checkpoints on first use; "
            "copy it there on an offline machine",
        ) from None
    m = m.to(device).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m
