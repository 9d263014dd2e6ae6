"""Benchmark `lipsync batch` against a loop of separate `lipsync dub` processes, on the same jobs, in one run.

Jobs: ``--jobs`` dubs = ``--jobs / 2`` videos x 2 languages. The videos are different ``--seconds`` cuts of a
real talking-head clip of ../shared/testmedia (scaled to ``--width``), the languages two cuts of a real speech
file. Two modes: a fixed face box (what remains is process start, torch import and checkpoint loading per
process) and detection with the SCRFD detector of ../shared/detectors (the batch also detects each video once
for both of its languages). Weights are the deterministic fake Wav2Lip of ../shared/compat (same size and cost
as the released file).

    uv run python benchmarks/batch_bench.py                         # 10 jobs of 5 s clips, both modes
    uv run python benchmarks/batch_bench.py --jobs 4 --seconds 2    # a reduced run
    uv run python benchmarks/batch_bench.py --modes box --workers 2 --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIPSYNC_SHARED", REPO.parent / "shared"))
CLIP = SHARED / "testmedia" / "liveportrait_s18.mp4"  # 1280x720, 30 fps, 9.4 s, one face
SPEECH = SHARED / "testmedia" / "retalking_2.wav"
SCRFD = SHARED / "detectors" / "scrfd_2.5g_bnkps.onnx"


def ffmpeg(*args: str) -> None:
    from lipsync_cli.media.ffmpeg import find_ffmpeg

    subprocess.run([find_ffmpeg(), "-nostdin", "-y", "-loglevel", "error", *args], check=True)


def fake_wav2lip(folder: Path) -> Path:
    script = SHARED / "compat" / "make_fake_ckpt.py"
    spec = importlib.util.spec_from_file_location("make_fake_ckpt", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = folder / "wav2lip.pth"
    mod.main([str(SHARED / "compat" / "wav2lip_keys.json"), str(out)])
    return out


def make_jobs(folder: Path, n_jobs: int, seconds: float, width: int) -> list[tuple[Path, Path]]:
    n_videos = max(1, n_jobs // 2)
    videos = []
    for k in range(n_videos):
        v = folder / f"video{k}.mp4"
        start = (k * 0.9) % max(0.1, 9.0 - seconds)  # different content: a cache hit would be a bug here
        ffmpeg("-ss", f"{start:.2f}", "-i", str(CLIP), "-t", str(seconds), "-vf", f"scale={width}:-2", "-an",
               "-c:v", "libx264", "-preset", "veryfast", str(v))
        videos.append(v)
    langs = []
    for k, lang in enumerate(("fr", "de")):  # consecutive cuts of the speech, looped (it is 5.0 s long)
        a = folder / f"{lang}.wav"
        ffmpeg("-stream_loop", "-1", "-i", str(SPEECH), "-ss", str(k * seconds), "-t", str(seconds), str(a))
        langs.append(a)
    return [(v, a) for v in videos for a in langs][:n_jobs]


def mode_args(mode: str, width: int) -> list[str]:
    if mode == "box":
        h = width * 9 // 16
        return ["--box", str(width // 2), str(h // 8), str(width * 7 // 10), str(h * 5 // 8)]  # the face of the clip
    return []


def children_cpu_s() -> float:
    """CPU seconds (user + system) used so far by the finished child processes (and theirs: ffmpeg, workers).
    On a machine shared with other work it measures our work alone, where the wall time also measures theirs."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_loop(jobs, ckpt: Path, mode: str, width: int, out: Path) -> list[float]:
    """Wall time (s) of each separate `lipsync dub` process."""
    out.mkdir(parents=True, exist_ok=True)
    walls = []
    for k, (v, a) in enumerate(jobs):
        cmd = [sys.executable, "-m", "lipsync_cli", "dub", str(v), str(a), "-o", str(out / f"{k}.mp4"),
               "--checkpoint", str(ckpt), "--device", "cpu", "--offline", "-q", *mode_args(mode, width)]
        if mode == "detect":
            cmd += ["--detector", "insightface", "--detector-weights", str(SCRFD)]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        walls.append(time.perf_counter() - t)
    return walls


def run_batch_cli(jobs, ckpt: Path, mode: str, width: int, out: Path, workers: int) -> tuple[float, dict]:
    manifest = out.parent / f"{out.name}.csv"
    manifest.write_text("video,audio\n" + "".join(f"{v},{a}\n" for v, a in jobs))
    cmd = [sys.executable, "-m", "lipsync_cli", "batch", str(manifest), "-o", str(out), "--checkpoint", str(ckpt),
           "--device", "cpu", "--offline", "-q", "--workers", str(workers)]
    if mode == "box":
        cmd += ["--box", *mode_args(mode, width)[1:]]
    else:
        cmd += ["--set", "detector=insightface", "--set", f"detector_weights={SCRFD}"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t
    return wall, json.loads((out / "report.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--width", type=int, default=640, help="width the clips are scaled to (px)")
    p.add_argument("--modes", nargs="+", default=["box", "detect"], choices=["box", "detect"])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    for f in (CLIP, SPEECH, SCRFD):
        if not f.exists():
            print(f"needs {f} (../shared)", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="batch_bench-"))
    try:
        ckpt = fake_wav2lip(tmp)
        jobs = make_jobs(tmp, args.jobs, args.seconds, args.width)
        results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "jobs": len(jobs),
                   "seconds": args.seconds, "width": args.width, "workers": args.workers, "cpus": os.cpu_count(),
                   "load_before": os.getloadavg(), "modes": {}}
        for mode in args.modes:
            cpu0 = children_cpu_s()
            loop_walls = run_loop(jobs, ckpt, mode, args.width, tmp / f"loop-{mode}")
            loop_s = sum(loop_walls)
            cpu1 = children_cpu_s()
            batch_s, report = run_batch_cli(jobs, ckpt, mode, args.width, tmp / f"batch-{mode}", args.workers)
            loop_cpu, batch_cpu = cpu1 - cpu0, children_cpu_s() - cpu1
            assert report["summary"]["done"] == len(jobs), report["summary"]
            detected = sum(1 for r in report["jobs"] if r["track"] == "detected")
            done = [json.loads(line) for line in (tmp / f"batch-{mode}" / "journal.jsonl").read_text().splitlines()]
            faces = sum(int(ev.get("faces") or 0) for ev in done if ev["state"] == "done")  # frames redrawn
            job_s = [float(r["wall_s"]) for r in report["jobs"]]
            results["modes"][mode] = {
                "loop_s": round(loop_s, 2), "batch_s": round(batch_s, 2),
                "loop_jobs_per_s": round(len(jobs) / loop_s, 3), "batch_jobs_per_s": round(len(jobs) / batch_s, 3),
                "ratio": round(loop_s / batch_s, 2), "detections": detected,
                "loop_cpu_s": round(loop_cpu, 1), "batch_cpu_s": round(batch_cpu, 1),
                "cpu_ratio": round(loop_cpu / batch_cpu, 2),
                "loop_job_s": [round(x, 2) for x in loop_walls],
                "frames": report["summary"]["frames"], "faces_redrawn": faces,
                # where the batch's time went: its jobs (first one, with detection: the detected ones) and the rest
                # (process start, torch import, model load)
                "batch_job_s": [round(x, 2) for x in job_s],
                "batch_outside_jobs_s": round(batch_s - sum(job_s), 2)}
            r = results["modes"][mode]
            print(f"{mode:>6}: {len(jobs)} jobs, loop {r['loop_s']:.1f} s ({r['loop_jobs_per_s']:.3f} jobs/s), "
                  f"batch {r['batch_s']:.1f} s ({r['batch_jobs_per_s']:.3f} jobs/s): {r['ratio']:.2f}x; "
                  f"{detected} detection(s), {r['frames']} frames; batch jobs {sum(job_s):.1f} s, "
                  f"outside them {r['batch_outside_jobs_s']:.1f} s; CPU time loop {loop_cpu:.0f} s, batch "
                  f"{batch_cpu:.0f} s: {r['cpu_ratio']:.2f}x", flush=True)
        results["load_after"] = os.getloadavg()
        print(json.dumps(results, indent=1))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
