"""Benchmark `lipsync dub --arch musetalk` against `--arch wav2lip` on the same 720p clip, in one run: frames/s end to
end, the generate stage's faces/s and the peak RSS, per precision.

    uv run python benchmarks/musetalk_bench.py                          # 2 s of the 720p clip, fp32 + bf16
    uv run python benchmarks/musetalk_bench.py --seconds 1 --precisions fp32 --json out.json

Each run is its own process (``dub()`` of the library with a fixed box, so no detector), so the peak RSS (VmHWM)
is the run's. The weights are deterministic fakes of the released sizes: Wav2Lip's from ../shared/compat, MuseTalk's
from tests/musetalk_fakes.py (an 850 M-parameter UNet, the full sd-vae-ft-mse and whisper-tiny: 3.9 GB), written
once into ``--weights-home`` (default ``~/.cache/lipsync-bench``) in the registry's layout and found there as
`lipsync weights download musetalk` would leave them (``LIPSYNC_HOME``).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from dub_bench import MEDIA, fake_checkpoint, peak_rss_mb  # noqa: E402


def ensure_release(home: Path) -> Path:
    """The released-size fake MuseTalk files under ``home/musetalk`` (written once: about a minute)."""
    if not (home / "musetalk" / "whisper" / "pytorch_model.bin").is_file():
        sys.path.insert(0, str(REPO / "tests"))
        from musetalk_fakes import write_fake_release

        print(f"writing the released-size fake MuseTalk files into {home / 'musetalk'} ...", file=sys.stderr)
        write_fake_release(home / "musetalk", small=False)
    return home


def child(args) -> dict:
    """One dub in this process; its figures as a dict."""
    from lipsync_cli.dub import DubOptions, dub

    opts = DubOptions(arch=args.arch, checkpoint=args.checkpoint, box=tuple(args.box), device="cpu",
                      precision=args.precision, batch_size=args.batch_size, silence="model", offline=True)
    t = time.perf_counter()
    res = dub(args.video, args.audio, Path(args.workdir) / f"{args.arch}_{args.precision}.mp4", opts)
    wall = time.perf_counter() - t
    gen_s = res.stage_seconds.get("generate", 0.0)
    return {"arch": args.arch, "precision": res.precision, "frames": res.frames, "wall_s": round(wall, 2),
            "fps_end_to_end": round(res.frames / wall, 3),
            "fps_streaming": round(res.frames / res.stream_seconds, 3) if res.stream_seconds else None,
            "generate_faces_per_s": round(res.stage_frames.get("generate", 0) / gen_s, 3) if gen_s else None,
            "startup_s": round(res.startup.get("total", 0.0), 2), "peak_rss_mb": round(peak_rss_mb())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--video", type=Path, default=MEDIA / "liveportrait_s18.mp4", help="a 720p clip")
    p.add_argument("--audio", type=Path, default=MEDIA / "retalking_2.wav")
    p.add_argument("--box", type=int, nargs=4, default=[600, 60, 900, 460], help="face box in --video")
    p.add_argument("--seconds", type=float, default=2.0, help="length of the dub (the audio is cut to it)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--archs", nargs="+", default=["wav2lip", "musetalk"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--weights-home", type=Path, default=Path.home() / ".cache" / "lipsync-bench")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--arch", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    from lipsync_cli.media.ffmpeg import find_ffmpeg

    home = ensure_release(args.weights_home) if "musetalk" in args.archs else args.weights_home
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "speech.wav"
        subprocess.run([find_ffmpeg(), "-nostdin", "-y", "-loglevel", "error", "-i", str(args.audio), "-t",
                        str(args.seconds), "-ac", "1", str(audio)], check=True)
        w2l = fake_checkpoint("wav2lip", Path(tmp))
        for arch in args.archs:
            for precision in args.precisions:
                cmd = [sys.executable, __file__, "--child", "--arch", arch, "--precision", precision, "--video",
                       str(args.video), "--audio", str(audio), "--box", *map(str, args.box), "--batch-size",
                       str(args.batch_size), "--workdir", tmp]
                if arch != "musetalk":
                    cmd += ["--checkpoint", str(w2l)]
                env = {**os.environ, "LIPSYNC_HOME": str(home), "LIPSYNC_OFFLINE": "1"}
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if r.returncode != 0:
                    raise SystemExit(f"{arch} {precision} failed:\n{r.stderr[-3000:]}")
                row = json.loads(r.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{arch:10s} {precision:5s} {row['frames']} frames: {row['fps_end_to_end']:.3f} frames/s end "
                      f"to end ({row['fps_streaming']} streaming), generate {row['generate_faces_per_s']} faces/s, "
                      f"start-up {row['startup_s']} s, peak RSS {row['peak_rss_mb']} MB", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                         "cpus": os.cpu_count(), "seconds": args.seconds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
