"""Frame-to-frame flicker of the mouth with and without `dub --enhance`, on a still image (no head motion).

Dubs the still with SCRFD detection (``--detector insightface``: SCRFD's points align the face) three times: plain,
``--enhance`` (fixed noise, our default) and ``--enhance --enhance-noise random`` (GFPGANer's behaviour), once
under silence (the plain mouth is the same in every frame) and once under speech. Flicker = the mean absolute
difference between consecutive frames over the mouth (the lower half of the face box), grey levels, on the frames
before encoding. Weights: the deterministic fakes from ../shared/compat (the released files' architectures).

    uv run python benchmarks/enhance_flicker.py --seconds 0.4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dub_bench import MEDIA, SHARED, fake_checkpoint  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", type=Path, default=MEDIA / "sadtalker_people_0.png")
    p.add_argument("--speech", type=Path, default=MEDIA / "retalking_2.wav")
    p.add_argument("--seconds", type=float, default=0.4)
    p.add_argument("--enhancer-weights", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    from lipsync_cli.checkpoint import load_generator
    from lipsync_cli.dub import DubOptions, detect_track, dub
    from lipsync_cli.faces.track import face_boxes
    from lipsync_cli.media.ffmpeg import find_ffmpeg

    work = Path(tempfile.mkdtemp(prefix="enhance_flicker_"))
    gen = load_generator(fake_checkpoint("wav2lip", work))
    enh = args.enhancer_weights or fake_checkpoint("gfpgan_v14", work)
    audios = {"silence": work / "silence.wav", "speech": work / "speech.wav"}
    ff = find_ffmpeg()
    subprocess.run([ff, "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"anullsrc=r=16000:cl=mono:d={args.seconds}",
                    str(audios["silence"])], check=True)
    subprocess.run([ff, "-y", "-loglevel", "error", "-i", str(args.speech), "-t", str(args.seconds), "-ac", "1",
                    "-ar", "16000", str(audios["speech"])], check=True)
    base = dict(detector="insightface", detector_weights=SHARED / "detectors" / "scrfd_2.5g_bnkps.onnx",
                device="cpu", precision="fp32", offline=True)
    runs = {"plain": {}, "enhance fixed": dict(enhance=True, enhancer_weights=enh),
            "enhance random": dict(enhance=True, enhancer_weights=enh, enhance_noise="random")}
    x1, y1, x2, y2 = face_boxes(detect_track(args.image, DubOptions(**base), fps=25.0))[0]  # the dubbed box
    results: dict[str, dict] = {}
    for audio_name, audio in audios.items():
        for run, extra in runs.items():
            frames: dict[int, np.ndarray] = {}
            t = time.perf_counter()
            res = dub(args.image, audio, work / "out.mp4", DubOptions(**base, **extra), model=gen,
                      frame_sink=lambda i, f, got=frames: got.__setitem__(i, f.copy()))
            wall = time.perf_counter() - t
            mouth = np.stack([frames[i] for i in range(len(frames))])[:, (y1 + y2) // 2:y2, x1:x2].astype(np.float32)
            flicker = float(np.abs(np.diff(mouth, axis=0)).mean())
            results[f"{audio_name} / {run}"] = {"flicker": flicker, "frames": res.frames, "wall_s": wall,
                                                "box": [x1, y1, x2, y2]}
            print(f"{audio_name:8s} {run:15s}: mouth flicker {flicker:.3f} grey levels/frame "
                  f"({res.frames} frames, box {(x1, y1, x2, y2)}, {wall:.1f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
