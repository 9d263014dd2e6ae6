"""Synthetic media for tests, made with ffmpeg's lavfi sources (no files shipped)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def ffmpeg_exe() -> str:
    import shutil

    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str]) -> None:
    proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {proc.stderr[-2000:]}")


def make_video(path: Path, seconds: float = 1.0, fps: float = 25, size: tuple[int, int] = (160, 120),
               vcodec: str = "libx264", audio: bool = True, pix_fmt: str = "yuv420p",
               extra: list[str] | None = None) -> Path:
    """A testsrc2 clip of ``size`` (w, h) at ``fps``; with a 440 Hz sine track when ``audio``."""
    w, h = size
    args = ["-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]
    args += ["-c:v", vcodec, "-pix_fmt", pix_fmt]
    if audio:
        args += ["-c:a", "aac" if Path(path).suffix in (".mp4", ".m4a", ".mov") else "libvorbis"
                 if Path(path).suffix == ".webm" else "pcm_s16le", "-shortest"]
    args += list(extra or [])
    run_ffmpeg([*args, str(path)])
    return Path(path)


def make_audio(path: Path, seconds: float = 1.0, sample_rate: int = 44100, channels: int = 2,
               kind: str = "speechlike", extra: list[str] | None = None) -> Path:
    """An audio file of ``seconds``; ``kind`` 'sine', 'silence' or 'speechlike' (amplitude-modulated tones)."""
    if kind == "sine":
        src = f"sine=frequency=300:sample_rate={sample_rate}:duration={seconds}"
    elif kind == "silence":
        src = f"anullsrc=r={sample_rate}:cl={'stereo' if channels == 2 else 'mono'}:d={seconds}"
    else:
        src = (f"aevalsrc='0.5*sin(2*PI*220*t)*abs(sin(2*PI*3*t))+0.2*sin(2*PI*1200*t)*abs(sin(2*PI*5*t))'"
               f":s={sample_rate}:d={seconds}")
    run_ffmpeg(["-f", "lavfi", "-i", src, "-ac", str(channels), *(extra or []), str(path)])
    return Path(path)


def make_image(path: Path, size: tuple[int, int] = (160, 120)) -> Path:
    w, h = size
    run_ffmpeg(["-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate=1:duration=1", "-frames:v", "1", str(path)])
    return Path(path)


def speech_with_pauses(path: Path, speech: Path, seg: float = 0.8, fps: int = 25) -> list[tuple[int, int]]:
    """A speech track with two 1 s pauses: ``seg`` s of the real speech in ``speech``, 1 s of digital silence, ``seg``
    s of speech, 1 s of white noise at -50 dBFS RMS (room tone), ``seg`` s of speech; written as 16 kHz float wav.
    Returns the true pauses as [start, end) frames at ``fps``."""
    import numpy as np
    import soundfile

    from lipsync_cli.audio import load_audio

    sr = 16000
    w = load_audio(speech)
    n, o = int(seg * sr), min(4 * sr, max(0, len(w) - 3 * int(seg * sr)))
    noise = np.random.default_rng(0).standard_normal(sr).astype(np.float32)
    noise *= 10 ** (-50 / 20) / np.sqrt(np.mean(noise ** 2))
    track = np.concatenate([w[o:o + n], np.zeros(sr, np.float32), w[o + n:o + 2 * n], noise, w[o + 2 * n:o + 3 * n]])
    soundfile.write(str(path), track, sr, subtype="FLOAT")
    a = int(seg * fps)
    return [(a, a + fps), (2 * a + fps, 2 * a + 2 * fps)]
