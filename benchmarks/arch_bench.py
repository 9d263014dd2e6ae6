"""Generator architecture benchmark: parameters, FLOPs per frame, frames/s and peak memory per arch.

    uv run python benchmarks/arch_bench.py                       # CPU, batches 1 32 128, fp32 + bf16
    uv run python benchmarks/arch_bench.py --device cuda --precisions fp32 bf16 fp16
    uv run python benchmarks/arch_bench.py --batches 1 8 --iters 2 --json out.json

Each architecture is measured in its own subprocess so the peak resident memory (and the peak GPU memory)
belongs to it alone. Models are random-init and prepared exactly as ``lipsync dub`` prepares them (eval mode,
BatchNorm folded into the convolutions, channels-last) unless ``--raw``. Frames/s is the median over
``--iters`` timed forward passes after ``--warmup`` untimed ones; FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` on one frame (multiply-add = 2 FLOPs). Ratios are against
Wav2Lip measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ARCHS = ("wav2lip", "attn_wav2lip", "lpips_attn_wav2lip")


def _autocast(device: str, precision: str):
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def _inputs(batch: int, device: str):
    import torch

    g = torch.Generator().manual_seed(0)
    mel = (torch.rand(batch, 1, 80, 16, generator=g) * 8 - 4).to(device)  # (B, 1, 80, 16)
    face = torch.rand(batch, 6, 96, 96, generator=g)  # (B, 6, 96, 96)
    face[:, :3, 48:] = 0
    return mel, face.to(device).contiguous(memory_format=torch.channels_last)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(arch: str, device: str, batches: list[int], precisions: list[str], iters: int, warmup: int,
            raw: bool) -> dict:
    """Everything about one arch, in this process."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lipsync_cli.models import build_generator

    torch.manual_seed(0)
    model = build_generator(arch).eval()
    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*_inputs(1, "cpu"))
    flops = counter.get_total_flops()
    if raw:
        model = model.to(device)
    else:
        from lipsync_cli.render import prepare_for_inference

        model = prepare_for_inference(model, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    fps: dict[str, dict[str, float]] = {}
    for precision in precisions:
        fps[precision] = {}
        for batch in batches:
            mel, face = _inputs(batch, device)
            times = []
            with torch.inference_mode(), _autocast(device, precision):
                for i in range(warmup + iters):
                    _sync(device)
                    t = time.perf_counter()
                    out = model(mel, face)
                    _sync(device)
                    if i >= warmup:
                        times.append(time.perf_counter() - t)
            assert out.shape == (batch, 3, 96, 96)
            fps[precision][str(batch)] = batch / statistics.median(times)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"arch": arch, "params": n_params, "flops_per_frame": flops, "fps": fps,
            "peak_rss_mb": peak_rss_mb, "peak_gpu_mb": peak_gpu_mb}


def _run_worker(arch: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", arch, "--device", args.device,
           "--batches", *map(str, args.batches), "--precisions", *args.precisions,
           "--iters", str(args.iters), "--warmup", str(args.warmup)] + (["--raw"] if args.raw else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{arch} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(results: list[dict], args: argparse.Namespace) -> str:
    base = next((r for r in results if r["arch"] == "wav2lip"), results[0])
    lines = []
    head = f"{'arch':20} {'params':>9} {'GFLOP/fr':>9} {'xW2L':>5} {'peak RSS':>9}"
    if args.device.startswith("cuda"):
        head += f" {'peak GPU':>9}"
    lines.append(head)
    for r in results:
        line = (f"{r['arch']:20} {r['params'] / 1e6:8.2f}M {r['flops_per_frame'] / 1e9:9.2f} "
                f"{r['flops_per_frame'] / base['flops_per_frame']:5.2f} {r['peak_rss_mb']:7.0f}MB")
        if r["peak_gpu_mb"] is not None:
            line += f" {r['peak_gpu_mb']:7.0f}MB"
        lines.append(line)
    lines.append("")
    lines.append(f"frames/s on {args.device} (ratio vs wav2lip)")
    cols = [(p, str(b)) for p in args.precisions for b in args.batches]
    lines.append(f"{'arch':20} " + " ".join(f"{p + ' b' + b:>15}" for p, b in cols))
    for r in results:
        cells = []
        for p, b in cols:
            v, w = r["fps"][p][b], base["fps"][p][b]
            cells.append(f"{v:8.1f} ({v / w:4.2f})")
        lines.append(f"{r['arch']:20} " + " ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32, 128])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--iters", type=int, default=3, help="timed forward passes per setting (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--raw", action="store_true", help="skip dub's inference preparation (BN folding etc.)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(measure(args.worker, args.device, args.batches, args.precisions, args.iters,
                                 args.warmup, args.raw)))
        return

    import torch

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device.startswith("cuda") else ""), flush=True)
    archs = ["wav2lip"] + [a for a in args.archs if a != "wav2lip"]  # the baseline is always measured
    results = []
    for arch in archs:
        t = time.perf_counter()
        results.append(_run_worker(arch, args))
        print(f"  {arch}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    print(_table(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
