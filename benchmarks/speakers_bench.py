"""What choosing the speaker costs: frames/s of `dub` on a few seconds of the Hamilton clip (a crowd shot, a cut, a
close shot), plain (the largest face) vs --ref-face (identity) vs two speakers with their own audio vs
--speaker auto (SyncNet scores), end to end (detection included), fake weights throughout.

    uv run python benchmarks/speakers_bench.py [--seconds 3] [--start 2.0] [--device cpu] [--json out.json]

Needs ../shared (the clip, the SCRFD detector, the fake checkpoint writer). The fake networks have the real ones'
shapes (Wav2Lip, SyncNet v2) or the released file's format (ArcFace: a tiny net, so identity here costs the
landmarks, the alignment and the extra decode pass, not a ResNet-50: add ~25 ms per embedded face on a CPU
for w600k_r50, 5 faces per face track).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))


def _fake_ckpt(name: str, folder: Path) -> Path:
    script = SHARED / "compat" / "make_fake_ckpt.py"
    spec = importlib.util.spec_from_file_location("make_fake_ckpt", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = folder / f"{name}.pth"
    mod.main([str(SHARED / "compat" / f"{name}_keys.json"), str(out)])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--start", type=float, default=2.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--modes", nargs="+", default=["plain", "ref-face", "two-speakers", "auto"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import cv2

    from lipsync_cli.checkpoint import load_generator
    from lipsync_cli.dub import DubOptions, dub
    from lipsync_cli.faces import load_detector
    from lipsync_cli.faces.track import track_video
    from lipsync_cli.media.decode import FrameReader
    from lipsync_cli.speakers import Reference, SpeakerSetup, SpeakerSpec
    from tests.fake_arcface import write_fake_arcface
    from tests.synth import ffmpeg_exe, make_audio

    scrfd = SHARED / "detectors" / "scrfd_2.5g_bnkps.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / "ham.mp4"
        subprocess.run([ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-ss", str(args.start), "-i",
                        str(SHARED / "testmedia" / "facerec_short_hamilton_clip.mp4"), "-t", str(args.seconds),
                        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", "-c:a", "aac", str(clip)],
                       check=True, capture_output=True)
        arcface = write_fake_arcface(tmp / "w600k_r50.onnx")
        wav2lip = load_generator(_fake_ckpt("wav2lip", tmp))
        syncnet = _fake_ckpt("syncnet_v2", tmp)
        # reference photos: the largest face of the last frame (close shot) and of the first (crowd)
        track = track_video(clip, load_detector("insightface", scrfd, det_size=320), det_size=320, every=4)
        with FrameReader(clip) as reader:
            frames = list(reader)
        photos = []
        for k in (len(frames) - 1, 0):
            d = max(track.faces[k], key=lambda d: (d[2] - d[0]) * (d[3] - d[1]))
            x1, y1, x2, y2 = (int(v) for v in d[:4])
            p = (x2 - x1) // 2
            photos.append(tmp / f"ref{k}.png")
            cv2.imwrite(str(photos[-1]), frames[k][max(0, y1 - p):y2 + p, max(0, x1 - p):x2 + p])
        a = make_audio(tmp / "a.wav", seconds=args.seconds)
        b = make_audio(tmp / "b.wav", seconds=args.seconds, kind="sine")
        base = DubOptions(detector="insightface", detector_weights=scrfd, device=args.device, precision="fp32")
        common = dict(recognition_weights=str(arcface), syncnet=syncnet)
        setups = {
            "plain": None,
            "ref-face": SpeakerSetup(speakers=(SpeakerSpec(reference=Reference(photo=photos[0])),), **common),
            "two-speakers": SpeakerSetup(speakers=(SpeakerSpec(audio=a, reference=Reference(photo=photos[0])),
                                                   SpeakerSpec(audio=b, reference=Reference(photo=photos[1]))),
                                         **common),
            "auto": SpeakerSetup(auto=True, **common),
        }
        rows = []
        for mode in args.modes:
            setup = setups[mode]
            options = DubOptions(**{**base.__dict__, "speakers": setup})
            t = time.perf_counter()
            res = dub(clip, None if mode == "two-speakers" else a, tmp / f"{mode}.mp4", options, model=wav2lip)
            wall = time.perf_counter() - t
            rows.append({"mode": mode, "frames": res.frames, "faces": res.faces, "wall_s": round(wall, 2),
                         "fps": round(res.frames / wall, 2),
                         "stages_s": {k: round(v, 2) for k, v in res.stage_seconds.items()}})
            print(f"{mode:>13}: {res.frames} frames, {res.faces} faces, {wall:6.1f} s, {res.frames / wall:5.2f} "
                  f"frames/s  (detect+choose {res.stage_seconds['detect']:.1f} s, generate "
                  f"{res.stage_seconds['generate']:.1f} s)", flush=True)
        plain = next((r for r in rows if r["mode"] == "plain"), None)
        if plain:
            for r in rows:
                r["vs_plain"] = round(r["fps"] / plain["fps"], 2)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
