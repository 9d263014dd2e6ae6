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


LPIPS_TRUNKS = {"alex": "lpips-alex", "vgg": "lpips-vgg"}  # --lpips-net -> registry name of its torchvision trunk


def make_lpips(net: str, pretrained: bool, device: torch.device | str, *, offline: bool | None = None,
               download: bool = True, notify=None) -> torch.nn.Module:
    """The LPIPS metric network (``net``: alex | vgg), frozen and in eval mode.

    ``pretrained``: the trunk is torchvision's ImageNet file, resolved through the weights registry
    (``lpips-alex`` / ``lpips-vgg``: our weights folders, then torch's hub cache ``$TORCH_HOME/hub/checkpoints``;
    downloaded there unless ``offline``, ``LIPSYNC_OFFLINE=1`` or ``download=False``, when WeightsNotFound names
    the ``lipsync weights download`` command) and loaded with ``weights_only=True``: torchvision never fetches
    anything itself. The linear layers ship inside the ``lpips`` package. ``pretrained=False``: a random trunk
    (tests). Raises WeightsNotFound, CheckpointError / CheckpointMismatch for a file that is not the trunk.
    """
    import warnings

    import lpips

    from lipsync_cli import weights

    if net not in LPIPS_TRUNKS:
        from lipsync_cli.errors import BadOption

        raise BadOption(f"unknown LPIPS net {net!r}", f"choose one of: {', '.join(LPIPS_TRUNKS)}")
    trunk = (weights.resolve(LPIPS_TRUNKS[net], None, offline=offline, download=download, notify=notify)
             if pretrained else None)
    with warnings.catch_warnings():  # lpips calls torchvision's deprecated `alexnet(pretrained=False)`
        warnings.simplefilter("ignore", UserWarning)
        m = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)  # random trunk, no download
    if trunk is not None:
        load_lpips_trunk(m, trunk)
    m = m.to(device).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def load_lpips_trunk(m: torch.nn.Module, path) -> None:
    """Load torchvision's ``alexnet()`` / ``vgg16()`` state dict (``features.<i>.weight`` ...) into the trunk of
    an ``lpips.LPIPS``, whose ``slice<k>`` Sequentials keep torchvision's layer indices
    (``slice2.3.weight`` is ``features.3.weight``). The classifier, if present, is ignored."""
    from lipsync_cli.checkpoint import load_file, unwrap_state_dict
    from lipsync_cli.errors import CheckpointMismatch

    sd = unwrap_state_dict(load_file(path))
    mapped = {}
    for key in m.net.state_dict():  # "slice2.3.weight"
        _, index, param = key.split(".")
        mapped[key] = sd.get(f"features.{index}.{param}")
    missing = [k for k, v in mapped.items() if v is None]
    if missing:
        raise CheckpointMismatch(
            f"{path} is not torchvision's {m.pnet_type} weights: no features.* tensors for {len(missing)} of "
            f"{len(mapped)} trunk parameters", f"`lipsync weights download {LPIPS_TRUNKS[m.pnet_type]}`")
    try:
        m.net.load_state_dict(mapped, strict=True)
    except RuntimeError as err:
        raise CheckpointMismatch(f"{path} does not fit the LPIPS {m.pnet_type} trunk: "
                                 f"{str(err).splitlines()[-1].strip()[:200]}") from None
