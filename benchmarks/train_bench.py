"""Training throughput: samples/s of one training step per model (expert and each generator), and of the data
loader on its own (JPEG decoding + mel windows), on a synthetic dataset made on the fly.

    uv run python benchmarks/train_bench.py                      # CPU, small batches
    uv run python benchmarks/train_bench.py --device cuda --batch-size 64 --workers 8 --precision auto

Prints one line per measurement and, with --json FILE, writes them as a JSON list.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def bench_loader(root: Path, lists: dict, kind: str, batch: int, workers: int, batches: int) -> float:
    from lipsync_cli.train.data import (
        ClipStore,
        GeneratorDataset,
        StepBatchSampler,
        SyncDataset,
        make_loader,
        read_filelist,
    )

    store = ClipStore(root, read_filelist(lists["train"]))
    ds = SyncDataset(store, 0) if kind == "syncnet" else GeneratorDataset(store, 0)
    loader = make_loader(ds, StepBatchSampler(0, batches + 2, batch), workers)
    it = iter(loader)
    next(it), next(it)  # warm-up: worker start, mel cache
    t = time.perf_counter()
    n = 0
    for _ in it:
        n += batch
    return n / (time.perf_counter() - t)


def bench_train(root, lists, out, kind, arch, batch, workers, steps, device, precision, expert) -> float:
    from lipsync_cli.train.config import make_config
    from lipsync_cli.train.core import train

    times: list[float] = []

    def on_event(ev):
        if ev["event"] == "step":
            times.append(time.perf_counter())

    extra = {"lpips_pretrained": False} if arch == "lpips_attn_wav2lip" else {}
    cfg = make_config(
        kind=kind,
        arch=arch,
        data=str(root),
        train_list=str(lists["train"]),
        val_list=str(lists["val"]),
        out=str(out),
        syncnet=expert,
        steps=steps,
        batch_size=batch,
        eval_every=10**9,
        eval_batches=1,
        log_every=1,
        workers=workers,
        device=device,
        precision=precision,
        tensorboard=False,
        sync_weight=0.03,
        **extra,
    )
    train(cfg, on_event)
    # the first two steps include warm-up (allocator, cuDNN autotune)
    if len(times) < 3:
        return float("nan")
    span = times[-1] - times[1]
    return (len(times) - 2) * batch / span


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--models", nargs="*", default=["syncnet", "wav2lip", "attn_wav2lip", "lpips_attn_wav2lip"])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from lipsync_cli.train.synthetic import make_synthetic_dataset

    results = []
    with tempfile.TemporaryDirectory(prefix="lipsync_train_bench_") as tmp:
        tmp = Path(tmp)
        lists = make_synthetic_dataset(tmp / "data", n_speakers=2, clips_per_speaker=3, seconds=3.0)
        for kind in ("syncnet", "generator"):
            sps = bench_loader(tmp / "data", lists, kind, args.batch_size, args.workers, args.loader_batches)
            results.append({"what": f"loader:{kind}", "samples_per_s": round(sps, 1), "workers": args.workers})
            print(f"loader {kind:>20}: {sps:8.1f} samples/s ({args.workers} workers)", flush=True)
        expert = None
        for model in args.models:
            kind = "syncnet" if model == "syncnet" else "generator"
            if kind == "generator" and expert is None:
                # a random expert is enough for timing: train 1 step of one
                bench_train(
                    tmp / "data",
                    lists,
                    tmp / "expert",
                    "syncnet",
                    "wav2lip",
                    2,
                    0,
                    1,
                    args.device,
                    "fp32",
                    None,
                )
                expert = str(tmp / "expert" / "last.pt")
            sps = bench_train(
                tmp / "data",
                lists,
                tmp / f"run_{model}",
                kind,
                model,
                args.batch_size,
                args.workers,
                args.steps,
                args.device,
                args.precision,
                expert,
            )
            results.append(
                {
                    "what": f"train:{model}",
                    "samples_per_s": round(sps, 2),
                    "batch_size": args.batch_size,
                    "device": args.device,
                    "precision": args.precision,
                }
            )
            print(
                f"train  {model:>20}: {sps:8.2f} samples/s (batch {args.batch_size}, {args.device})",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
