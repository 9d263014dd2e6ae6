"""Inference-time graph simplification: fold each BatchNorm into the convolution before it.

In eval mode a BatchNorm is a per-channel affine map, so conv -> BN equals one conv with rescaled weights and a
new bias. Folding removes a full read and write of every activation map, which is most of BN's cost on a CPU.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) where every ``Sequential(Conv2d|ConvTranspose2d, BatchNorm2d, ...)`` pair
    is folded into one convolution (the BN replaced by Identity). Outputs equal the original's to float rounding."""
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (_, a), (name_b, b) in zip(children, children[1:]):
            is_conv = isinstance(a, (nn.Conv2d, nn.ConvTranspose2d))
            if is_conv and isinstance(b, nn.BatchNorm2d) and b.track_running_stats:
                # the conv of the copy takes the folded weights in place (fuse_conv_bn_eval would copy it again)
                a.weight, a.bias = fuse_conv_bn_weights(a.weight, a.bias, b.running_mean, b.running_var, b.eps,
                                                        b.weight, b.bias, transpose=isinstance(a, nn.ConvTranspose2d))
                setattr(module, name_b, nn.Identity())
    for attr in ("arch", "config"):
        if hasattr(model, attr):
            setattr(fused, attr, getattr(model, attr))
    return fused
