"""Benchmark `lipsync dub`: end-to-end and per-stage frames/s and peak RSS, against a baseline in the same run.

The baseline is Wav2Lip's inference.py algorithm transcribed (every frame read into a list with OpenCV, fp32,
batch 128, an intermediate AVI written with cv2.VideoWriter, then ffmpeg to mux the audio), so ratios compare
the two pipelines on the same machine, clip and weights. Every measurement runs in its own subprocess so peak
RSS (VmHWM) is per run. Weights are the deterministic fakes from ../shared/compat (same architecture and cost as
the released files).

    uv run python benchmarks/dub_bench.py                      # 720p clip: baseline, fixed box, S3FD
    uv run python benchmarks/dub_bench.py --rss-seconds 20 80  # 1080p RSS growth
    uv run python benchmarks/dub_bench.py --rss-seconds 60 300 1200   # 1, 5 and 20 minutes (long)
    uv run python benchmarks/dub_bench.py --skip baseline box s3fd --loop-seconds 20 45  # what looping costs
    uv run python benchmarks/dub_bench.py --skip baseline box s3fd --enhance   # --enhance: with and without
    uv run python benchmarks/dub_bench.py --issue-rows         # issue 20's speed rows (30 s and 5 s clips, SCRFD)
    uv run python benchmarks/dub_bench.py --issue-rows --row-seconds 10 3   # the same rows, shorter (iterating)

``--issue-rows`` measures, in one run and as a user would (a whole process each, interpreter start-up included):
the clip looped to 30 s (720p30), fixed box, default precision, against the baseline on the same clip (ratio of
process times, and peak RSS); the same 30 s with SCRFD detection (frames/s over the whole process); and a 5 s
clip against the baseline, with the share of start-up in each. Each lipsync row also shows its CPU seconds
(process and ffmpeg) and how they packed on the cores (``--stats``' packing figure).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIPSYNC_SHARED", REPO.parent / "shared"))
MEDIA = SHARED / "testmedia"


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fake_checkpoint(name: str, out_dir: Path) -> Path:
    out = out_dir / f"{name}_fake.pth"
    if not out.exists():
        spec = importlib.util.spec_from_file_location("make_fake_ckpt", SHARED / "compat" / "make_fake_ckpt.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        with open(os.devnull, "w") as devnull:
            stdout, sys.stdout = sys.stdout, devnull
            try:
                mod.main([str(SHARED / "compat" / f"{name}_keys.json"), str(out)])
            finally:
                sys.stdout = stdout
    return out


# ---------------------------------------------------------------------------------------------------------------
# the runs (each in a child process)


def run_lipsync(args) -> dict:
    """One dub: ``args.mode`` box (fixed box), s3fd or scrfd (detection with that detector)."""
    from lipsync_cli.dub import DubOptions, dub

    weights = {"s3fd": args.s3fd, "scrfd": args.scrfd}.get(args.mode)
    opts = DubOptions(checkpoint=Path(args.checkpoint), box=tuple(args.box) if args.mode == "box" else None,
                      detector="insightface" if args.mode == "scrfd" else "s3fd",
                      detector_weights=Path(weights) if weights else None,
                      precision=args.precision, device=args.device, batch_size=args.batch_size, offline=True,
                      loop=args.loop, enhance=bool(args.enhancer),
                      enhancer_weights=Path(args.enhancer) if args.enhancer else None)
    tag = "_enhance" if args.enhancer else ""
    out = Path(args.workdir) / f"out_{args.mode}_{args.precision}_{args.loop}{tag}.mp4"
    res = dub(args.video, args.audio, out, opts)
    return {"frames": res.frames, "wall_s": res.wall_seconds, "fps": res.frames / res.wall_seconds,
            "stage_fps": res.stage_fps(), "stage_s": res.stage_seconds, "faces": res.faces,
            "precision": res.precision, "batch": res.batch_size, "peak_rss_mb": peak_rss_mb(),
            "decoded_frames": res.decoded_frames, "device": res.device, "startup": res.startup,
            "peak_gpu_mb": peak_gpu_mb(res.device), "encoding": res.encoding,
            "stream_s": res.stream_seconds, "queue_stats": res.queue_stats,
            "cpu": res.cpu.as_dict() if getattr(res, "cpu", None) is not None else None}


def peak_gpu_mb(device: str) -> float | None:
    """Peak memory torch allocated on the CUDA device in this process, MB (None off CUDA)."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def run_baseline(args) -> dict:
    """Wav2Lip inference.py's flow with a fixed box (--box), transcribed; our mel (upstream's librosa code fails on
    current librosa)."""
    import cv2
    import numpy as np
    import torch

    from lipsync_cli.audio import load_audio, melspectrogram
    from lipsync_cli.checkpoint import load_generator
    from lipsync_cli.media.ffmpeg import find_ffmpeg

    t0 = time.perf_counter()
    cap = cv2.VideoCapture(str(args.video))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    mel = melspectrogram(load_audio(args.audio))
    chunks, i, step = [], 0, 80.0 / fps
    while True:
        s = int(i * step)
        if s + 16 > mel.shape[1]:
            chunks.append(mel[:, -16:])
            break
        chunks.append(mel[:, s:s + 16])
        i += 1
    frames = frames[:len(chunks)]
    model = load_generator(args.checkpoint)
    x1, y1, x2, y2 = args.box
    tmp_avi = Path(args.workdir) / "result.avi"
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(tmp_avi), cv2.VideoWriter_fourcc(*"DIVX"), fps, (w, h))
    bs = 128
    for b in range(0, len(chunks), bs):
        idx = range(b, min(b + bs, len(chunks)))
        faces = np.stack([cv2.resize(frames[k % len(frames)][y1:y2, x1:x2], (96, 96)) for k in idx])
        masked = faces.copy()
        masked[:, 48:] = 0
        img = np.concatenate((masked, faces), axis=3) / 255.0
        mels = np.stack([chunks[k] for k in idx])[:, None]
        with torch.no_grad():
            pred = model(torch.FloatTensor(mels), torch.FloatTensor(np.transpose(img, (0, 3, 1, 2))))
        pred = pred.cpu().numpy().transpose(0, 2, 3, 1) * 255.0
        for k, p in zip(idx, pred):
            f = frames[k % len(frames)].copy()
            f[y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
            writer.write(f)
    writer.release()
    out = Path(args.workdir) / "baseline.mp4"
    subprocess.run([find_ffmpeg(), "-y", "-loglevel", "error", "-i", str(args.audio), "-i", str(tmp_avi),
                    "-strict", "-2", "-q:v", "1", str(out)], check=True)
    wall = time.perf_counter() - t0
    return {"frames": len(chunks), "wall_s": wall, "fps": len(chunks) / wall, "peak_rss_mb": peak_rss_mb()}


def child(argv: list[str]) -> dict:
    """Run one measurement in a fresh interpreter; returns its JSON line."""
    import resource

    t = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t  # with interpreter start-up and imports
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the run and its ffmpeg children, start-up included: less sensitive to a shared machine's load
    res["cpu_s"] = done.ru_utime + done.ru_stime - cpu.ru_utime - cpu.ru_stime
    res["startup_share"] = 1 - res["wall_s"] / res["process_s"]
    return res


def loop_media(src_video: Path, src_audio: Path, seconds: float, out_dir: Path,
               audio_seconds: float | None = None) -> tuple[Path, Path]:
    """The same content repeated to ``seconds`` (the audio to ``audio_seconds``, default the same): video
    stream-copied, audio looped."""
    from lipsync_cli.media.ffmpeg import find_ffmpeg

    audio_seconds = seconds if audio_seconds is None else audio_seconds
    v, a = out_dir / f"video_{seconds:g}s.mp4", out_dir / f"audio_{audio_seconds:g}s.wav"
    ff = find_ffmpeg()
    if not v.exists():
        subprocess.run([ff, "-y", "-loglevel", "error", "-stream_loop", "-1", "-i", str(src_video), "-t",
                        str(seconds), "-c", "copy", "-an", str(v)], check=True)
    if not a.exists():
        subprocess.run([ff, "-y", "-loglevel", "error", "-stream_loop", "-1", "-i", str(src_audio), "-t",
                        str(audio_seconds), "-ac", "1", "-ar", "16000", str(a)], check=True)
    return v, a


def _row(name: str, r: dict, base: dict | None = None) -> str:
    """One --issue-rows line: frames/s over the whole process (start-up included) and inside the call, the
    start-up share, the ratio to ``base`` (process time over process time), peak RSS, CPU seconds and packing."""
    fps_proc = r["frames"] / r["process_s"]
    # CPU seconds (ffmpeg included) are the figure a loaded machine distorts least
    ratio = (f", {base['process_s'] / r['process_s']:.2f}x baseline ({base['cpu_s'] / r['cpu_s']:.2f}x in CPU "
             "seconds)") if base else ""
    # start-up: the interpreter and imports before the call, and inside dub() what it did before the first frame
    startup_s = r["process_s"] - r["wall_s"] + (r.get("startup") or {}).get("total", 0.0)
    cpu = r.get("cpu")
    packing = ""
    if cpu:
        total = cpu["process"] + cpu["children"]
        packing = (f"; streaming CPU {total:.1f} s ({1000 * total / r['frames']:.1f} ms a frame), wall "
                   f"{r['stream_s'] / (total / cpu['cores']):.2f}x the CPU / {cpu['cores']} cores")
    return (f"  {name}: {r['frames']} frames, process {r['process_s']:.1f} s = {fps_proc:.2f} frames/s with "
            f"start-up ({startup_s:.1f} s, {100 * startup_s / r['process_s']:.0f}% of it){ratio}; in the call "
            f"{r['fps']:.2f} frames/s; peak RSS {r['peak_rss_mb']:.0f} MB; CPU {r['cpu_s']:.1f} s with "
            f"ffmpeg{packing}")


def issue_rows(args, ckpt: Path, work: Path, results: dict) -> None:
    """Issue 20 item 3's rows (see the module docstring)."""
    long_s, short_s = args.row_seconds
    print(f"issue rows: {args.video.name} looped, {args.audio.name} looped, box {args.box}, cpu {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    for secs in (long_s, short_s):
        v, a = loop_media(args.video, args.audio, secs, work)
        common = ["--video", str(v), "--audio", str(a), "--box", *map(str, args.box), "--checkpoint", str(ckpt),
                  "--workdir", str(work)]
        base = results[f"baseline-{secs:g}s"] = child([*common, "--mode", "baseline"])
        print(_row(f"{secs:g} s baseline (Wav2Lip algorithm, fp32, fixed box)", base), flush=True)
        r = results[f"box-{secs:g}s"] = child([*common, "--mode", "box", "--precision", "auto"])
        print(_row(f"{secs:g} s lipsync --box ({r['precision']})", r, base), flush=True)
        if secs == long_s and args.scrfd_onnx.exists():
            r = results[f"scrfd-{secs:g}s"] = child([*common, "--mode", "scrfd", "--scrfd", str(args.scrfd_onnx)])
            print(_row(f"{secs:g} s lipsync SCRFD detection ({r['precision']})", r) +
                  f"; real time needs {r['frames'] / secs:.1f} frames/s", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end (2-core goals: the long box row >= 4x and <= 1.5 GB, "
          "SCRFD >= 30 frames/s, the short row >= 2.5x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", type=Path, default=MEDIA / "liveportrait_s18.mp4")
    p.add_argument("--audio", type=Path, default=MEDIA / "retalking_2.wav")
    p.add_argument("--box", type=int, nargs=4, default=[600, 60, 900, 460], help="face box in --video")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--s3fd", type=Path)
    p.add_argument("--scrfd", type=Path, help="SCRFD .onnx for --mode scrfd (child runs)")
    p.add_argument("--device", default="cpu", help="device of the lipsync runs")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    p.add_argument("--skip", nargs="*", default=[], help="skip: baseline box s3fd")
    p.add_argument("--rss-seconds", type=float, nargs="*", default=[],
                   help="also measure peak RSS dubbing the 1080p clip repeated to these lengths (fixed box)")
    p.add_argument("--rss-video", type=Path, default=MEDIA / "wan22_video.mp4")
    p.add_argument("--rss-audio", type=Path, default=MEDIA / "musetalk_eng.wav")
    p.add_argument("--rss-box", type=int, nargs=4, default=[760, 120, 1160, 600])
    p.add_argument("--loop-seconds", type=float, nargs=2, metavar=("VIDEO_S", "AUDIO_S"),
                   help="also time --loop pingpong against --loop forward: the 1080p clip cut to VIDEO_S under "
                        "AUDIO_S of audio (fixed box)")
    p.add_argument("--enhance", action="store_true",
                   help="also dub --enhance-seconds of the clip (fixed box) without and with --enhance, in one run")
    p.add_argument("--enhance-seconds", type=float, default=2.0, help="length of the --enhance runs (GFPGAN costs "
                                                                     "about a second per frame on a CPU)")
    p.add_argument("--enhancer-weights", type=Path, help="restorer for --enhance (default: the fake GFPGAN v1.4, "
                                                          "same architecture and cost as GFPGANv1.4.pth)")
    p.add_argument("--issue-rows", action="store_true",
                   help="only issue 20's speed rows: --row-seconds clips, fixed box vs baseline, SCRFD detection")
    p.add_argument("--row-seconds", type=float, nargs=2, default=[30.0, 5.0], metavar=("LONG_S", "SHORT_S"),
                   help="lengths of --issue-rows' long and short clips (default 30 5)")
    p.add_argument("--scrfd-onnx", type=Path, default=SHARED / "detectors" / "scrfd_2.5g_bnkps.onnx",
                   help="SCRFD detector of --issue-rows' detection row")
    p.add_argument("--json", type=Path, help="write all results here")
    # internal
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--loop", default="pingpong", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--enhancer", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        res = run_baseline(args) if args.mode == "baseline" else run_lipsync(args)
        print(json.dumps(res))
        if args.mode != "baseline":  # a lipsync process ends as the `lipsync` command does (no teardown)
            from lipsync_cli.cli import leave

            leave(0)
        return

    work = Path(tempfile.mkdtemp(prefix="dub_bench_"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the fake weights, clips and outputs (about 250 MB a run)


def measure(args, work: Path) -> None:
    """The runs ``args`` ask for, in ``work``; prints each row as it is measured."""
    ckpt = args.checkpoint or fake_checkpoint("wav2lip", work)
    s3fd = args.s3fd or fake_checkpoint("s3fd", work)
    common = ["--video", str(args.video), "--audio", str(args.audio), "--box", *map(str, args.box),
              "--checkpoint", str(ckpt), "--s3fd", str(s3fd), "--workdir", str(work)]
    if args.batch_size:
        common += ["--batch-size", str(args.batch_size)]
    if args.device != "cpu":
        common += ["--device", args.device]
    results: dict[str, dict] = {}
    if args.issue_rows:
        issue_rows(args, ckpt, work, results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return
    print(f"clip {args.video.name} + {args.audio.name}, box {args.box}, torch threads: default, cpu {os.cpu_count()}")
    if "baseline" not in args.skip:
        results["baseline"] = child([*common, "--mode", "baseline"])
        print(f"  wav2lip-baseline (fp32, fixed box): {results['baseline']['fps']:.2f} frames/s, "
              f"peak RSS {results['baseline']['peak_rss_mb']:.0f} MB", flush=True)
    base = results.get("baseline", {}).get("fps")
    for mode in ("box", "s3fd"):
        if mode in args.skip:
            continue
        for prec in args.precisions:
            r = child([*common, "--mode", mode, "--precision", prec])
            results[f"{mode}-{prec}"] = r
            ratio = f" = {r['fps'] / base:.2f}x baseline" if base else ""
            stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stage_fps"].items() if r["stage_s"].get(k))
            print(f"  lipsync {mode:4s} {r['precision']:4s}: {r['fps']:.2f} frames/s{ratio}; peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB; CPU {r['cpu_s']:.1f} s (process); stage frames/s: {stages}",
                  flush=True)
    for secs in args.rss_seconds:
        v, a = loop_media(args.rss_video, args.rss_audio, secs, work)
        r = child(["--video", str(v), "--audio", str(a), "--box", *map(str, args.rss_box), "--checkpoint",
                   str(ckpt), "--workdir", str(work), "--mode", "box", "--precision", "auto"])
        results[f"rss-{secs:g}s"] = r
        print(f"  1080p {secs:g} s: {r['frames']} frames, {r['fps']:.2f} frames/s, peak RSS {r['peak_rss_mb']:.0f} MB",
              flush=True)
    if len(args.rss_seconds) >= 2:
        lo, hi = results[f"rss-{args.rss_seconds[0]:g}s"], results[f"rss-{args.rss_seconds[-1]:g}s"]
        print(f"  RSS growth {args.rss_seconds[0]:g} s -> {args.rss_seconds[-1]:g} s: "
              f"{(hi['peak_rss_mb'] / lo['peak_rss_mb'] - 1) * 100:+.1f}%")
    if args.loop_seconds:
        vs, aus = args.loop_seconds
        v, a = loop_media(args.rss_video, args.rss_audio, vs, work, audio_seconds=aus)
        for loop in ("forward", "pingpong"):
            r = child(["--video", str(v), "--audio", str(a), "--box", *map(str, args.rss_box), "--checkpoint",
                       str(ckpt), "--workdir", str(work), "--mode", "box", "--precision", "auto", "--loop", loop])
            results[f"loop-{loop}"] = r
            print(f"  1080p {vs:g} s video under {aus:g} s audio, --loop {loop}: {r['frames']} frames in "
                  f"{r['wall_s']:.1f} s ({r['fps']:.2f} frames/s; process {r['process_s']:.1f} s, start-up "
                  f"{r['startup_share'] * 100:.0f}%), {r['decoded_frames']} frames decoded, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB", flush=True)
        f, pp = results["loop-forward"], results["loop-pingpong"]
        print(f"  pingpong / forward wall time: {pp['wall_s'] / f['wall_s']:.2f}x")
    if args.enhance:
        enh = args.enhancer_weights or fake_checkpoint("gfpgan_v14", work)
        v, a = loop_media(args.video, args.audio, args.enhance_seconds, work)
        runs = {"plain": [], "enhance": ["--enhancer", str(enh)]}
        for name, extra in runs.items():
            r = child(["--video", str(v), "--audio", str(a), "--box", *map(str, args.box), "--checkpoint", str(ckpt),
                       "--workdir", str(work), "--mode", "box", "--precision", args.precisions[0], *extra])
            results[f"enhance-{name}"] = r
            per_face = (f"; enhance {r['stage_s']['enhance'] / max(1, r['faces']):.2f} s per face"
                        if "enhance" in r["stage_s"] else "")
            print(f"  {args.enhance_seconds:g} s, box, {r['precision']}, {name:7s}: {r['frames']} frames, "
                  f"{r['fps']:.2f} frames/s, peak RSS {r['peak_rss_mb']:.0f} MB{per_face}", flush=True)
        p0, p1 = results["enhance-plain"], results["enhance-enhance"]
        print(f"  --enhance: {p1['wall_s'] / p0['wall_s']:.1f}x the wall time, "
              f"{p1['peak_rss_mb'] - p0['peak_rss_mb']:+.0f} MB peak RSS")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
