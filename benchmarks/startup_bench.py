"""Time to first frame of `lipsync dub`: interpreter + CLI imports, then dub() until its first output frame, per
checkout, in the same session (to compare a change with its parent).

    uv run python benchmarks/startup_bench.py                                 # this checkout
    git worktree add --detach /tmp/base main
    uv run python benchmarks/startup_bench.py --src /tmp/base . --repeat 5    # before / after, interleaved

Each run is a fresh interpreter with ``--src`` first on sys.path; dub() is stopped at its first frame (frame_sink
raises), so the audio's length does not matter. Weights: the fake wav2lip of ../shared/compat (same size and
format as the released file). Also times ``lipsync dub --help`` (a fresh interpreter each).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dub_bench import MEDIA, fake_checkpoint  # noqa: E402

CHILD = r"""
import json, sys, time
from pathlib import Path
def age():
    after = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    import os
    return float(Path("/proc/uptime").read_text().split()[0]) - int(after[19]) / os.sysconf("SC_CLK_TCK")
import lipsync_cli.cli  # what `lipsync` imports before parsing
t_cli = age()
from lipsync_cli.dub import DubOptions, dub
class First(Exception):
    pass
def sink(i, frame):
    raise First
video, audio, ckpt, out, box = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
opts = DubOptions(checkpoint=Path(ckpt), box=tuple(int(v) for v in box.split(",")), device="cpu", offline=True,
                  batch_size=1)  # the first frame goes out alone: start-up plus one frame's work
t_call = age()
try:
    dub(video, audio, out, opts, frame_sink=sink)
except First:
    pass
now = age()
print(json.dumps({"cli_imports": t_cli, "to_dub": t_call, "first_frame": now, "dub_to_first": now - t_call}))
"""


def run_child(src: Path, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "LIPSYNC_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_help(src: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lipsync_cli", "dub", "--help"], capture_output=True, env=env, check=True)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", type=Path, nargs="+", default=[Path(__file__).resolve().parents[1]],
                   help="checkouts to compare (each put first on PYTHONPATH)")
    p.add_argument("--video", type=Path, default=MEDIA / "wan22_video.mp4")
    p.add_argument("--audio", type=Path, default=MEDIA / "musetalk_eng.wav")
    p.add_argument("--box", default="760,120,1160,600")
    p.add_argument("--seconds", type=float, default=0, help="loop the video to this length first (0: as is)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="startup_bench_"))
    ckpt = fake_checkpoint("wav2lip", work)
    video = args.video
    if args.seconds:
        from dub_bench import loop_media

        video, _ = loop_media(args.video, args.audio, args.seconds, work)
    runs: dict[str, list[dict]] = {str(s): [] for s in args.src}
    helps: dict[str, list[float]] = {str(s): [] for s in args.src}
    for k in range(args.repeat):  # interleaved, so a busy spell of the machine hits every checkout alike
        for src in args.src:
            runs[str(src)].append(run_child(src, [str(video), str(args.audio), str(ckpt), str(work / f"o{k}.mp4"),
                                                  args.box]))
            helps[str(src)].append(time_help(src))
    print(f"{video.name}, fixed box, cpu, seconds: min / median of {args.repeat}")
    print(f"{'checkout':32} {'dub --help':>12} {'CLI imports':>12} {'dub->1st frame':>15} {'process->1st frame':>18}")
    for src in args.src:
        def cell(values: list[float]) -> str:
            return f"{min(values):.2f}/{statistics.median(values):.2f}"

        r = runs[str(src)]
        print(f"{str(src)[-32:]:32} {cell(helps[str(src)]):>12} {cell([x['cli_imports'] for x in r]):>12} "
              f"{cell([x['dub_to_first'] for x in r]):>15} {cell([x['first_frame'] for x in r]):>18}")


if __name__ == "__main__":
    main()
