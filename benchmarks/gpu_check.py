"""One short GPU check: generator, end-to-end dub, ffmpeg floor and training throughput, in one table.

    benchmarks/gpu_check.sh                  # on a CUDA machine: under 5 minutes, no downloads
    benchmarks/gpu_check.sh --cpu-smoke      # the same code paths on the CPU, tiny sizes (checks the script)
    uv run python benchmarks/gpu_check.py --skip train --json gpu.json

What it measures, each in its own process (so peak memory belongs to one measurement):
- generator frames/s per arch (random init, prepared as dub prepares it) at fp32/bf16/fp16, batch 32/128/512
  (``arch_bench.measure``);
- end-to-end ``lipsync dub`` frames/s on a 1080p clip (../shared/testmedia, looped to ``--seconds``) with a fixed
  box, with S3FD and with SCRFD detection (``dub_bench.run_lipsync``; frames / wall time, start-up included, and
  the streaming rate without it);
- the ffmpeg floor for the same clip and codec in the same run: one ffmpeg decoding and encoding it (libx264, the
  dub's preset and crf), and the same through a raw BGR pipe between two ffmpegs, as dub's frames travel; the
  dub's wall time per frame is given as a multiple of the floor's;
- training samples/s per model (``train_bench.bench_train`` on a synthetic dataset);
- peak GPU memory (torch's allocator) of each.
Weights are fakes in the released formats (../shared/compat: wav2lip, s3fd) and ../shared/detectors' SCRFD.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import arch_bench  # noqa: E402
import dub_bench  # noqa: E402

SCRFD_ONNX = dub_bench.SHARED / "detectors" / "scrfd_2.5g_bnkps.onnx"
CLIP = dub_bench.MEDIA / "wan22_video.mp4"  # 1920x1080, 30 fps, 3.5 s: one face
AUDIO = dub_bench.MEDIA / "musetalk_eng.wav"  # 60 s of speech
CLIP_BOX = (760, 120, 1160, 600)  # the face in CLIP at 1080p
SECTIONS = ("generator", "dub", "train")
TRAIN_MODELS = ("syncnet", *arch_bench.ARCHS)
# dub's default encoder settings (DubOptions.crf / .preset): the floor encodes with the same
CRF, PRESET = 18, "veryfast"


def settings(args) -> dict:
    """Sizes of the run: the GPU check, or tiny ones for --cpu-smoke."""
    if args.cpu_smoke:
        return {"device": "cpu", "batches": [1], "iters": 1, "warmup": 0, "seconds": 0.3, "scale": 1 / 8,
                "train_batch": 2, "train_steps": 3, "train_seconds": 1.0, "dub_batch": 4}
    return {"device": args.device, "batches": [32, 128, 512], "iters": 5, "warmup": 2, "seconds": args.seconds,
            "scale": 1.0, "train_batch": args.train_batch, "train_steps": args.train_steps, "train_seconds": 3.0,
            "dub_batch": None}


# ---------------------------------------------------------------------------------------------------------------
# the clip and the ffmpeg floor


def make_clip(work: Path, seconds: float, scale: float) -> tuple[Path, Path, tuple[int, int, int, int]]:
    """CLIP looped (or cut) to ``seconds`` at ``scale`` of 1080p, its audio, and the face box at that size."""
    from lipsync_cli.media.ffmpeg import find_ffmpeg

    video, audio = dub_bench.loop_media(CLIP, AUDIO, seconds, work)
    box = tuple(int(round(v * scale)) for v in CLIP_BOX)
    if scale != 1.0:
        small = work / f"clip_{scale:.3f}.mp4"
        subprocess.run([find_ffmpeg(), "-nostdin", "-y", "-loglevel", "error", "-i", str(video), "-vf",
                        f"scale=trunc(iw*{scale}/2)*2:trunc(ih*{scale}/2)*2", "-c:v", "libx264", "-preset",
                        "ultrafast", "-crf", "12", str(small)], check=True)
        video = small
    return video, audio, box


def ffmpeg_floor(video: Path, work: Path) -> dict:
    """Seconds for ffmpeg alone to decode ``video`` and encode it as dub does (libx264, CRF, PRESET, yuv420p):
    ``transcode`` in one process, ``piped`` through raw bgr24 between two (dub's own path, minus the dub)."""
    from lipsync_cli.media.ffmpeg import find_ffmpeg
    from lipsync_cli.media.probe import probe

    ff = find_ffmpeg()
    n = probe(video).n_frames
    encode = ["-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF), "-pix_fmt", "yuv420p"]
    t = time.perf_counter()
    subprocess.run([ff, "-nostdin", "-y", "-loglevel", "error", "-i", str(video), "-map", "0:v", *encode,
                    str(work / "floor_transcode.mp4")], check=True)
    transcode = time.perf_counter() - t
    info = probe(video)
    t = time.perf_counter()
    dec = subprocess.Popen([ff, "-nostdin", "-loglevel", "error", "-i", str(video), "-map", "0:v", "-f", "rawvideo",
                            "-pix_fmt", "bgr24", "-"], stdout=subprocess.PIPE)
    enc = subprocess.run([ff, "-nostdin", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s",
                          f"{info.width}x{info.height}", "-r", str(info.fps), "-i", "-", *encode,
                          str(work / "floor_piped.mp4")], stdin=dec.stdout, check=True)
    dec.stdout.close()
    dec.wait()
    piped = time.perf_counter() - t
    assert enc.returncode == 0
    return {"frames": n, "transcode_s": transcode, "piped_s": piped, "width": info.width, "height": info.height}


# ---------------------------------------------------------------------------------------------------------------
# training (a child per model: peak memory per model)


def train_child(model: str, data: Path, work: Path, device: str, batch: int, steps: int) -> dict:
    import train_bench

    lists = json.loads((data / "lists.json").read_text())
    lists = {k: Path(v) for k, v in lists.items()}
    kind = "syncnet" if model == "syncnet" else "generator"
    expert = str(work / "run_syncnet" / "last.pt") if kind == "generator" else None
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
    sps = train_bench.bench_train(data / "data", lists, work / f"run_{model}", kind, "wav2lip" if kind == "syncnet"
                                  else model, batch, 0, steps, device, "auto" if device != "cpu" else "fp32", expert)
    return {"samples_per_s": sps, "peak_gpu_mb": dub_bench.peak_gpu_mb(device)}


def run_train(model: str, data: Path, work: Path, s: dict) -> dict:
    cmd = [sys.executable, __file__, "--train-child", model, "--train-data", str(data), "--workdir", str(work),
           "--device", s["device"], "--train-batch", str(s["train_batch"]), "--train-steps", str(s["train_steps"])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# the table


def _row(section: str, what: str, setting: str, rate: float | None, unit: str, ratio: str = "",
         peak: float | None = None, note: str = "") -> dict:
    return {"section": section, "what": what, "setting": setting, "rate": rate, "unit": unit, "ratio": ratio,
            "peak_gpu_mb": peak, "note": note}


def table(rows: list[dict]) -> str:
    head = f"{'section':10} {'what':20} {'setting':16} {'rate':>10} {'unit':9} {'ratio':>13} {'peak GPU':>9}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        rate = f"{r['rate']:10.1f}" if isinstance(r["rate"], (int, float)) else f"{'-':>10}"
        peak = f"{r['peak_gpu_mb']:7.0f}MB" if r["peak_gpu_mb"] is not None else f"{'-':>9}"
        lines.append(f"{r['section']:10} {r['what']:20} {r['setting']:16} {rate} {r['unit']:9} {r['ratio']:>13} "
                     f"{peak}  {r['note']}")
    return "\n".join(lines)


def environment(device: str) -> str:
    import onnxruntime as ort
    import torch

    from lipsync_cli.media.ffmpeg import find_ffmpeg

    gpu = ""
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = f", {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    ff = subprocess.run([find_ffmpeg(), "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    return (f"gpu_check on {device}{gpu}; torch {torch.__version__}, {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.machine()}); onnxruntime {ort.__version__} "
            f"{ort.get_available_providers()}; {' '.join(ff.split()[:3])}")


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="the same code paths on the CPU with tiny sizes")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the 1080p clip dubbed end to end")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=8)
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--train-child", help=argparse.SUPPRESS)
    p.add_argument("--train-data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.train_child:
        print(json.dumps(train_child(args.train_child, args.train_data, args.workdir, args.device, args.train_batch,
                                     args.train_steps)))
        return

    s = settings(args)
    if s["device"].startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU visible to torch: run with --cpu-smoke to check the script on the CPU")
    t_all = time.perf_counter()
    print(environment(s["device"]), flush=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def progress(msg: str) -> None:
        print(f"  [{time.perf_counter() - t_all:5.0f} s] {msg}", file=sys.stderr, flush=True)

    def attempt(section: str, what: str, fn) -> None:
        """Run one measurement; a failure becomes a row of the table (the other measurements still run)."""
        try:
            fn()
        except (Exception, SystemExit) as err:  # noqa: BLE001 - reported in the table, the run goes on
            last = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            rows.append(_row(section, what, "", None, "", note=f"FAILED: {last[:100]}"))
        progress(f"{section} {what}")

    if "generator" not in args.skip:
        ns = argparse.Namespace(device=s["device"], batches=s["batches"], precisions=["fp32", "bf16", "fp16"],
                                iters=s["iters"], warmup=s["warmup"], raw=False)
        def generator(arch: str) -> None:
            r = arch_bench._run_worker(arch, ns)
            for prec, by_batch in r["fps"].items():
                for b, fps in by_batch.items():
                    rows.append(_row("generator", arch, f"{prec} b{b}", fps, "frames/s", peak=r["peak_gpu_mb"],
                                     note=f"{r['flops_per_frame'] / 1e9:.2f} GFLOP/frame"))

        for arch in arch_bench.ARCHS:
            attempt("generator", arch, lambda arch=arch: generator(arch))

    floor: dict = {}
    if "dub" not in args.skip:
        video, audio, box = make_clip(work, s["seconds"], s["scale"])

        def measure_floor() -> None:
            floor.update(ffmpeg_floor(video, work))
            n, size = floor["frames"], f"{floor['width']}x{floor['height']}"
            rows.append(_row("floor", "ffmpeg transcode", f"{size} x264", n / floor["transcode_s"], "frames/s",
                             note=f"{n} frames, {PRESET} crf {CRF}"))
            rows.append(_row("floor", "ffmpeg piped bgr24", f"{size} x264", n / floor["piped_s"], "frames/s",
                             note="decode | raw BGR pipe | encode"))

        attempt("floor", "ffmpeg", measure_floor)
        size = f"{floor.get('width', '?')}x{floor.get('height', '?')}"
        ckpt = dub_bench.fake_checkpoint("wav2lip", work)
        s3fd = dub_bench.fake_checkpoint("s3fd", work)
        common = ["--video", str(video), "--audio", str(audio), "--box", *map(str, box), "--checkpoint", str(ckpt),
                  "--s3fd", str(s3fd), "--scrfd", str(SCRFD_ONNX), "--workdir", str(work), "--device", s["device"],
                  "--precision", "auto"] + (["--batch-size", str(s["dub_batch"])] if s["dub_batch"] else [])
        def dub(mode: str) -> None:
            r = dub_bench.child([*common, "--mode", mode])
            start = r["startup"].get("total", 0.0)
            streaming = r["frames"] / max(1e-9, r["wall_s"] - start)
            ratio = f"{floor['frames'] / floor['transcode_s'] / r['fps']:.2f}x floor" if floor else ""
            rows.append(_row("dub", f"lipsync dub {mode}", f"{size} {r['precision']} b{r['batch']}", r["fps"],
                             "frames/s", ratio,
                             r["peak_gpu_mb"], f"{streaming:.1f} fr/s after {start:.1f} s start-up; "
                                               f"{r['frames']} frames, {r['faces']} faces"))

        for mode in ("box", "s3fd", "scrfd"):
            attempt("dub", f"lipsync dub {mode}", lambda mode=mode: dub(mode))

    if "train" not in args.skip:
        from lipsync_cli.train.synthetic import make_synthetic_dataset

        data = work / "train"
        lists = make_synthetic_dataset(data / "data", n_speakers=2, clips_per_speaker=3, seconds=s["train_seconds"])
        (data / "lists.json").write_text(json.dumps({k: str(v) for k, v in lists.items()}))

        def train(model: str) -> None:
            r = run_train(model, data, work, s)
            rows.append(_row("train", model, f"b{s['train_batch']} x{s['train_steps']} steps", r["samples_per_s"],
                             "samples/s", peak=r["peak_gpu_mb"]))

        for model in TRAIN_MODELS:  # syncnet first: its checkpoint is the generators' sync expert
            attempt("train", model, lambda model=model: train(model))

    print(table(rows))
    print(f"({time.perf_counter() - t_all:.0f} s in all; ratio: dub's wall time per frame / ffmpeg transcode's of "
          f"the same clip; peak GPU: torch's allocator, onnxruntime's own memory not included)")
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(s["device"]), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
