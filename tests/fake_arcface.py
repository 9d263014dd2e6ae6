"""A fake ArcFace recognition model in the released ONNX format (insightface's ``w600k_r50.onnx``: input
``input.1`` of 1x3x112x112 RGB pixels normalised as (x - 127.5) / 127.5, output ``683`` of 1x512), exported from a
tiny torch net so tests run without the real weights.

The net is deterministic on image content: the aligned face is averaged over 4x4 pixel blocks, the grey mean of
the image and the mean face layout of an aligned crop are taken out (so what is left is what makes this face
different from an average face: skin tone, hair, glasses, background), and a fixed random projection maps it to 512
numbers. Two crops of the same face get nearly the same embedding, two different people clearly different ones.
"""

from __future__ import annotations

from pathlib import Path

INPUT_NAME = "input.1"
OUTPUT_NAME = "683"
SIZE = 112
DIM = 512


def build_net(seed: int = 0):
    import torch
    from torch import nn

    class FakeArcFace(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.pool = nn.AvgPool2d(4)  # (1, 3, 28, 28)
            self.proj = nn.Linear(3 * 28 * 28, DIM, bias=False)
            with torch.no_grad():
                self.proj.weight.copy_(torch.randn(DIM, 3 * 28 * 28, generator=g) / 28.0)

        def forward(self, x):  # (B, 3, 112, 112) in [-1, 1]
            p = self.pool(x)  # (B, 3, 28, 28)
            p = p - p.mean(dim=(1, 2, 3), keepdim=True)
            p = p / (p.flatten(1).std(dim=1)[:, None, None, None] + 1e-3)
            return self.proj(p.flatten(1))  # (B, 512)

    return FakeArcFace().eval()


def write_fake_arcface(path: str | Path, seed: int = 0) -> Path:
    """Write the fake model to ``path`` (an ``.onnx`` file) and return it."""
    import torch

    path = Path(path)
    net = build_net(seed)
    dummy = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(net, (dummy,), str(path), input_names=[INPUT_NAME], output_names=["embedding"],
                      opset_version=13, dynamo=False)
    # the released file's output is called "683", a name torch's exporter refuses: rename it in the graph
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        node.output[:] = [OUTPUT_NAME if o == "embedding" else o for o in node.output]
    model.graph.output[0].name = OUTPUT_NAME
    onnx.save(model, str(path))
    return path


if __name__ == "__main__":
    import sys

    write_fake_arcface(sys.argv[1] if len(sys.argv) > 1 else "fake_w600k_r50.onnx")
