"""A synthetic talking-face dataset where lip sync is learnable in minutes on a CPU.

The audio is a voiced tone (a few harmonics plus a little noise) cut into syllable-like bursts of random
length and loudness; the video is a drawn face (ellipse, eyes, nose) whose mouth opening at frame ``i``
follows the audio's RMS loudness during that frame. The mouth is in the lower half of the crop, where the
generator's input is masked and where the expert looks.

Two writers:
* ``make_synthetic_dataset`` writes Wav2Lip's *preprocessed* layout directly
  (``<speaker>/<clip>/<i>.jpg`` face crops, ``audio.wav``, ``filelists/{train,val,test}.txt``), for tests;
* ``make_synthetic_lrs2`` writes an LRS2-shaped folder (``main/<speaker>/<clip>.mp4`` with audio and
  ``{train,val,test}.txt``) of small videos in which the face sits in a larger frame, for ``lipsync prepare``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from lipsync_cli.constants import SAMPLE_RATE

SPLITS = ("train", "val", "test")


def syllable_audio(seconds: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 audio in [-1, 1] of ``seconds``: voiced bursts 60-260 ms long with random loudness, and
    gaps."""
    n = round(seconds * sample_rate)
    env = np.zeros(n, np.float32)
    pos = 0
    while pos < n:
        length = int(rng.uniform(0.06, 0.26) * sample_rate)
        level = 0.0 if rng.random() < 0.3 else float(rng.uniform(0.25, 1.0))
        env[pos : pos + length] = level
        pos += length
    # ~10 ms attack/release so bursts are syllable-like rather than clicks
    k = max(1, int(0.01 * sample_rate))
    env = np.convolve(env, np.ones(k, np.float32) / k, mode="same").astype(np.float32)
    t = np.arange(n, dtype=np.float32) / sample_rate
    f0 = float(rng.uniform(110, 220))
    carrier = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3, 5))
    carrier = carrier / 1.7 + 0.05 * rng.standard_normal(n).astype(np.float32)
    return (0.6 * env * carrier).astype(np.float32)


def frame_openings(wav: np.ndarray, n_frames: int, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mouth opening in [0, 1] per video frame: the RMS loudness of the audio during that frame,
    normalised."""
    out = np.zeros(n_frames, np.float32)
    for i in range(n_frames):
        a, b = int(i * sample_rate / fps), int((i + 1) * sample_rate / fps)
        seg = wav[a:b]
        out[i] = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) if len(seg) else 0.0
    peak = out.max()
    return out / peak if peak > 0 else out


def draw_face(size: int, opening: float, style: dict, jitter: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A (size, size, 3) BGR uint8 drawn face; the mouth (lower half) opens with ``opening`` in [0, 1]."""
    import cv2

    s = size / 96.0
    img = np.empty((size, size, 3), np.uint8)
    img[:] = style["bg"]
    cx, cy = size // 2 + jitter[0], size // 2 + jitter[1]
    cv2.ellipse(img, (cx, cy), (int(40 * s), int(46 * s)), 0, 0, 360, style["skin"], -1, cv2.LINE_AA)
    for dx in (-15, 15):  # eyes, upper half
        cv2.ellipse(
            img,
            (cx + int(dx * s), cy - int(14 * s)),
            (int(7 * s), int(4 * s)),
            0,
            0,
            360,
            (255, 255, 255),
            -1,
            cv2.LINE_AA,
        )
        cv2.circle(img, (cx + int(dx * s), cy - int(14 * s)), max(1, int(3 * s)), style["iris"], -1, cv2.LINE_AA)
    cv2.line(img, (cx, cy - int(6 * s)), (cx, cy + int(8 * s)), style["nose"], max(1, int(2 * s)), cv2.LINE_AA)
    # mouth centred at 0.72 of the height: always below the generator's mask line (rows 48:)
    my = cy + int(22 * s)
    h = round((1 + 11 * opening) * s)
    cv2.ellipse(img, (cx, my), (int(14 * s), max(1, h)), 0, 0, 360, style["lips"], -1, cv2.LINE_AA)
    if h > 2:
        cv2.ellipse(img, (cx, my), (int(10 * s), max(1, h - int(2 * s))), 0, 0, 360, (20, 10, 40), -1, cv2.LINE_AA)
    return img


def _style(rng: np.random.Generator) -> dict:
    def col(lo, hi):
        return tuple(int(v) for v in rng.integers(lo, hi, 3))

    return {
        "bg": col(20, 120),
        "skin": (int(rng.integers(90, 170)), int(rng.integers(130, 200)), int(rng.integers(170, 250))),
        "iris": col(0, 90),
        "nose": col(60, 140),
        "lips": (int(rng.integers(40, 90)), int(rng.integers(30, 80)), int(rng.integers(150, 230))),
    }


def _clip_ids(n_speakers: int, clips_per_speaker: int) -> list[tuple[str, str]]:
    return [(f"spk{s:02d}", f"{c:05d}") for s in range(n_speakers) for c in range(clips_per_speaker)]


def _split_of(s: int, c: int, clips_per_speaker: int, n_total: int) -> str:
    if n_total < 3 or clips_per_speaker < 2:
        return "train"
    if c == clips_per_speaker - 1:
        return "val" if s % 2 == 0 else "test"
    return "train"


def _write_lists(lines: dict[str, list[str]], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    if not lines["val"]:
        lines["val"] = list(lines["train"])
    if not lines["test"]:
        lines["test"] = list(lines["val"])
    out = {}
    for split in SPLITS:
        p = folder / f"{split}.txt"
        p.write_text("".join(f"{x}\n" for x in lines[split]))
        out[split] = p
    return out


def _write_wav(path: Path, wav: np.ndarray) -> None:
    import soundfile as sf

    sf.write(str(path), wav, SAMPLE_RATE, subtype="PCM_16")


def _clip_media(rng: np.random.Generator, seconds: float, fps: float, size: int, style: dict):
    """(audio, list of (size, size, 3) BGR face frames) for one clip."""
    wav = syllable_audio(seconds, rng)
    n_frames = round(seconds * fps)
    openings = frame_openings(wav, n_frames, fps)
    base = rng.integers(-2, 3, 2)
    frames = []
    for i in range(n_frames):
        jitter = (int(base[0] + rng.integers(-1, 2)), int(base[1] + rng.integers(-1, 2)))
        frames.append(draw_face(size, float(openings[i]), style, jitter))
    return wav, frames


def make_synthetic_dataset(
    root: str | os.PathLike,
    n_speakers: int = 2,
    clips_per_speaker: int = 3,
    seconds: float = 2.0,
    fps: float = 25,
    seed: int = 0,
    size: int = 96,
) -> dict[str, Path]:
    """Write a preprocessed-layout dataset under ``root``; return ``{"train"|"val"|"test": filelist path}``.

    Layout: ``root/<speaker>/<clip>/<i>.jpg`` (``size`` x ``size`` face crops, frame ``i`` 0-based),
    ``root/<speaker>/<clip>/audio.wav`` (16 kHz mono), ``root/filelists/<split>.txt`` of ``speaker/clip``
    lines.
    ``seconds`` of audio/video per clip at ``fps``. Deterministic for a given ``seed``.
    """
    import cv2

    root = Path(root)
    rng = np.random.default_rng(seed)
    lines: dict[str, list[str]] = {k: [] for k in SPLITS}
    ids = _clip_ids(n_speakers, clips_per_speaker)
    styles = {spk: _style(rng) for spk in sorted({s for s, _ in ids})}
    for spk, clip in ids:
        d = root / spk / clip
        d.mkdir(parents=True, exist_ok=True)
        wav, frames = _clip_media(rng, seconds, fps, size, styles[spk])
        for i, fr in enumerate(frames):
            cv2.imwrite(str(d / f"{i}.jpg"), fr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        _write_wav(d / "audio.wav", wav)
        s, c = int(spk[3:]), int(clip)
        lines[_split_of(s, c, clips_per_speaker, len(ids))].append(f"{spk}/{clip}")
    return _write_lists(lines, root / "filelists")


def _ffmpeg() -> str:
    try:
        from lipsync_cli.media.ffmpeg import find_ffmpeg

        return str(find_ffmpeg())
    except ImportError:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()


def write_mp4(path: Path, frames: list[np.ndarray], fps: float, wav: np.ndarray | None) -> None:
    """Encode BGR frames (+ optional 16 kHz mono audio) as an h264/aac mp4 with ffmpeg (argument lists, no
    shell)."""
    h, w = frames[0].shape[:2]
    with tempfile.TemporaryDirectory(prefix="lipsync_synth_") as tmp:
        args = [
            _ffmpeg(),
            "-nostdin",
            "-y",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "bgr24",
            "-s",
            f"{w}x{h}",
            "-r",
            str(fps),
            "-i",
            "pipe:0",
        ]
        if wav is not None:
            wav_path = Path(tmp) / "a.wav"
            _write_wav(wav_path, wav)
            args += ["-i", str(wav_path), "-c:a", "aac", "-shortest"]
        args += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", str(path)]
        raw = b"".join(np.ascontiguousarray(f).tobytes() for f in frames)
        proc = subprocess.run(args, input=raw, capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed writing {path}: {proc.stderr.decode(errors='replace')[-1000:]}")


def _camera(frame: np.ndarray, zoom: float, shift: tuple[float, float]) -> np.ndarray:
    """``frame`` seen by a camera zoomed in by ``zoom`` (about the centre) and moved by ``shift`` (x, y) px."""
    import cv2

    h, w = frame.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, zoom)
    m[:, 2] += shift
    return cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def make_synthetic_lrs2(
    root: str | os.PathLike,
    n_speakers: int = 2,
    clips_per_speaker: int = 2,
    seconds: float = 1.0,
    fps: float = 25,
    seed: int = 0,
    frame_size: tuple[int, int] = (160, 128),
    face_size: int = 96,
    background: np.ndarray | None = None,
    pretrain_clips: int = 0,
    motion: float = 0.0,
) -> dict[str, Path]:
    """Write an LRS2-shaped folder: ``root/main/<speaker>/<clip>.mp4`` and ``root/{train,val,test}.txt``.

    Each video is ``frame_size`` (w, h) at ``fps`` with an AAC audio track; a drawn ``face_size`` face sits
    in it.
    ``background`` (a BGR image, e.g. a real photo when a real detector must find a face) replaces the drawn
    face:
    every frame is that image resized to the frame (the audio is still the synthetic one). ``pretrain_clips``
    > 0 also writes ``root/pretrain/<speaker>/<clip>.mp4``
    with the same names as in ``main`` (to test that they do not collide). ``motion`` > 0 moves the camera:
    over each clip it zooms in by that fraction of the frame and pans a few pixels, so the face moves and a
    detector's box changes size from frame to frame (as in real footage); 0 keeps it still.
    Returns ``{split: list path}``.
    """
    import cv2

    root = Path(root)
    rng = np.random.default_rng(seed)
    w, h = frame_size
    ids = _clip_ids(n_speakers, clips_per_speaker)
    styles = {spk: _style(rng) for spk in sorted({s for s, _ in ids})}
    lines: dict[str, list[str]] = {k: [] for k in SPLITS}

    def clip_frames(spk: str):
        wav, faces = _clip_media(rng, seconds, fps, face_size, styles[spk])
        frames = []
        for face in faces:
            if background is not None:
                frame = cv2.resize(background, (w, h), interpolation=cv2.INTER_AREA)
            else:
                frame = np.full((h, w, 3), styles[spk]["bg"], np.uint8)
            if background is None:
                y0, x0 = (h - face_size) // 2, (w - face_size) // 2
                frame[y0 : y0 + face_size, x0 : x0 + face_size] = face
            if motion:
                t = len(frames) / max(1, len(faces) - 1)  # 0 -> 1 over the clip
                frame = _camera(frame, 1.0 + motion * t, (4.0 * t, -3.0 * t))
            frames.append(frame)
        return wav, frames

    for spk, clip in ids:
        d = root / "main" / spk
        d.mkdir(parents=True, exist_ok=True)
        wav, frames = clip_frames(spk)
        write_mp4(d / f"{clip}.mp4", frames, fps, wav)
        s, c = int(spk[3:]), int(clip)
        lines[_split_of(s, c, clips_per_speaker, len(ids))].append(f"{spk}/{clip}")
    for spk, clip in ids[:pretrain_clips]:
        d = root / "pretrain" / spk
        d.mkdir(parents=True, exist_ok=True)
        wav, frames = clip_frames(spk)
        write_mp4(d / f"{clip}.mp4", frames, fps, wav)
    return _write_lists(lines, root)
