"""The papers' benchmark protocol on a prepared dataset (Wav2Lip table 1 and its successors).

Dataset layout (``lipsync prepare`` / the training issue): ``DATA/<speaker>/<clip>/<i>.jpg`` face crops (frame
``i``, 25 fps) and ``DATA/<speaker>/<clip>/audio.wav``; a test list of ``speaker/clip`` lines.

* Dubbing (default): every test video is dubbed with the audio of another test video, from a pairs file
  (Wav2Lip's ``test_filelists`` format: ``AUDIO_CLIP VIDEO_CLIP`` per line) or paired at random with a seed,
  choosing audio no longer than the video; each output is scored for LSE-D / LSE-C (whole frames: the clips
  are
  face crops, the LRS protocol).
  The crops of one clip differ in size (``prepare``'s box follows the face): each is resized to the generator's
  input, 96x96, as training reads them, before it is dubbed; the real row scores the crops as they are.
* Reconstruction (``reconstruction=True``): every video is dubbed with its own audio, and the generated frames
  are also compared with the real ones: PSNR, SSIM, LPIPS (when AlexNet weights are local) and FID over the
  mouth halves of the crops (when Inception weights are local).
The real videos, scored the same way with their own audio, are the reference row.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from lipsync_cli.constants import DEFAULT_FPS, FACE_SIZE
from lipsync_cli.errors import BadOption, InputNotFound, LipsyncError, WeightsNotFound
from lipsync_cli.evaluate.lse import (
    VSHIFT,
    LSEResult,
    read_frames,
    read_pcm16,
    score_clip,
    status_of,
    summarize,
    to_syncnet_frames,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, "int | None"], None]  # (stage, advanced, total)


@dataclass(frozen=True)
class BenchmarkOptions:
    """What ``lipsync eval benchmark`` needs besides the dataset; the CLI's defaults come from here."""

    checkpoint: Path | None = None  # generator weights (required unless a model is passed)
    arch: str | None = None
    syncnet: Path | None = None  # None -> registry syncnet_v2
    pairs: Path | None = None  # AUDIO_CLIP VIDEO_CLIP lines; None -> seeded random pairs
    seed: int = 0
    reconstruction: bool = False
    device: str = "auto"  # auto: cuda > mps > cpu
    batch_size: int = 20  # SyncNet windows per pass
    dub_batch_size: int = 16
    inception: Path | None = None  # FID weights; None -> torch hub cache, else FID is skipped
    limit: int | None = None  # score only the first N test clips
    name: str | None = None  # the method's row label (default: the checkpoint's file name)


@dataclass
class PairResult:
    """One dubbed test video: its LSE, and with reconstruction its image metrics (means over frames)."""

    video: str
    audio: str
    output: str | None = None
    lse: LSEResult | None = None
    psnr: float | None = None
    ssim: float | None = None
    lpips: float | None = None
    n_frames: int = 0
    first_frame: int = 0  # the video clip's first scored frame (see clip_run)
    status: str = "ok"
    error: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lse"] = self.lse.to_dict() if self.lse else None
        return d


@dataclass
class BenchmarkReport:
    real: list[LSEResult]
    pairs: list[PairResult]
    summary: dict
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[tuple[str, str]]:
        """(test clip, "status: error") of every clip that was not scored, real or dubbed; a clip that failed
        both the same way once."""
        out: list[tuple[str, str]] = []
        for r in [*self.real, *self.pairs]:
            if r.status != "ok":
                why = (r.video, f"{r.status}: {r.error}" if r.error else r.status)
                if why not in out:
                    out.append(why)
        return out

    def to_dict(self) -> dict:
        return {
            "summary": self.summary,
            "notes": self.notes,
            "real": [r.to_dict() for r in self.real],
            "pairs": [p.to_dict() for p in self.pairs],
        }


# ----------------------------------------------------------------------------------------------------------
# dataset


def read_test_list(path: str | os.PathLike, data: str | os.PathLike | None = None) -> list[str]:
    """``speaker/clip`` names from a test list (blank lines and ``#`` comments skipped; only the first
    column).

    A relative ``path`` that does not exist is also looked for under ``DATA`` and ``DATA/filelists``.
    """
    p = Path(path)
    if not p.is_file() and data is not None and not p.is_absolute():
        for cand in (Path(data) / p, Path(data) / "filelists" / p):
            if cand.is_file():
                p = cand
                break
    if not p.is_file():
        raise InputNotFound(f"test list not found: {path}")
    names = []
    for line in p.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line.split()[0])
    if not names:
        raise BadOption(f"test list {p} names no clips")
    return names


def frame_indices(folder: Path) -> list[int]:
    """The frame indices ``i`` of the ``<i>.jpg`` files in ``folder``, ascending."""
    return sorted(int(f.stem) for f in folder.glob("*.jpg") if f.stem.isdigit())


def longest_run(indices: Sequence[int]) -> range:
    """The longest run of consecutive values in ascending ``indices`` (the first of equal ones); empty for none.

    ``lipsync prepare`` leaves out the frames where it found no face, so frame ``i`` of a clip belongs to
    ``i / fps`` s of its audio whatever is missing before it: only a run without gaps is one piece of video."""
    best = range(0)
    start = prev = None
    for i in [*indices, None]:
        if start is not None and i == prev + 1:
            prev = i
            continue
        if start is not None and prev + 1 - start > len(best):
            best = range(start, prev + 1)
        start = prev = i
    return best


def _ranges(indices: Sequence[int]) -> str:
    """'0-2, 4-14' for ascending indices."""
    parts, run = [], []
    for i in [*indices, None]:
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}")
        run = [i]
    return ", ".join(parts)


def clip_run(data: Path, clip: str) -> range:
    """The frame indices of ``clip`` that are scored: its longest run without a missing frame."""
    idx = frame_indices(data / clip)
    if not idx:
        raise InputNotFound(f"no frames (<i>.jpg) in {data / clip}")
    return longest_run(idx)


def clip_frames(data: Path, clip: str, run: range | None = None) -> list[np.ndarray]:
    """The frames (BGR uint8) of ``run`` (default: :func:`clip_run`), read by index: element k is frame
    ``run.start + k``. Each keeps its own size: ``lipsync prepare``'s box follows the face, so the crops of one
    clip differ by a few pixels. Raises MediaError for a frame that does not decode."""
    import cv2

    from lipsync_cli.errors import MediaError

    run = clip_run(data, clip) if run is None else run
    frames = []
    for i in run:
        f = data / clip / f"{i}.jpg"
        img = cv2.imread(str(f))
        if img is None:
            raise MediaError(f"cannot decode frame {f}")
        frames.append(img)
    return frames


def clip_audio(data: Path, clip: str) -> Path:
    p = data / clip / "audio.wav"
    if not p.is_file():
        raise InputNotFound(f"no audio.wav in {data / clip}")
    return p


def audio_offset(run: range, fps: float = DEFAULT_FPS) -> int:
    """The 16 kHz sample where frame ``run.start`` begins."""
    from lipsync_cli.constants import SAMPLE_RATE

    return int(round(run.start * SAMPLE_RATE / fps))


def clip_durations(
    data: Path, clips: Sequence[str], fps: float = DEFAULT_FPS
) -> dict[str, tuple[float, float]]:
    """(video seconds, audio seconds) per clip: the video is its scored run (:func:`clip_run`), the audio the
    whole audio.wav; clips whose files are missing are left out."""
    import soundfile as sf

    out = {}
    for c in clips:
        n = len(longest_run(frame_indices(data / c)))
        a = data / c / "audio.wav"
        if n and a.is_file():
            info = sf.info(str(a))
            out[c] = (n / fps, info.frames / info.samplerate)
    return out


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(video clip, audio clip) pairs from a file of ``AUDIO_CLIP VIDEO_CLIP`` lines (Wav2Lip's format)."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFound(f"pairs file not found: {p}")
    pairs = []
    for k, line in enumerate(p.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise BadOption(f"{p}:{k}: expected 'AUDIO_CLIP VIDEO_CLIP', got {line!r}")
        pairs.append((parts[1], parts[0]))
    return pairs


def random_pairs(
    durations: dict[str, tuple[float, float]],
    clips: Sequence[str],
    seed: int = 0,
    tolerance: float = 1.0 / DEFAULT_FPS,
) -> list[tuple[str, str | None]]:
    """For each video clip, the audio of another clip no longer than the video (+ ``tolerance`` s), chosen
    with
    ``numpy.random.default_rng(seed)``; None when no other clip's audio is short enough."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str | None]] = []
    for v in clips:
        if v not in durations:
            out.append((v, None))
            continue
        vdur = durations[v][0]
        cands = [c for c in clips if c != v and c in durations and durations[c][1] <= vdur + tolerance]
        out.append((v, str(cands[int(rng.integers(len(cands)))]) if cands else None))
    return out


# ----------------------------------------------------------------------------------------------------------
# running


def _safe(clip: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", clip)


def _write_clip_video(frames: list[np.ndarray], out: Path, fps: float = DEFAULT_FPS) -> Path:
    """The real clip as a (near-lossless, crf 0) mp4, the input ``dub`` needs."""
    from lipsync_cli.media.encode import VideoWriter

    h, w = frames[0].shape[:2]
    with VideoWriter(out, w, h, fps, crf=0, preset="veryfast") as writer:
        for f in frames:
            writer.write(f)
    return out


def _write_pcm16(pcm: np.ndarray, out: Path) -> Path:
    """16 kHz mono int16 samples as a wav file."""
    import soundfile as sf

    from lipsync_cli.constants import SAMPLE_RATE

    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), np.asarray(pcm, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
    return out


def _status(err: Exception) -> str:
    return status_of(err) if isinstance(err, LipsyncError) else "error"


def _message(err: Exception) -> str:
    """One line for a row's error column: ours as they are, anything else with its type (a cv2 or numpy
    error's own text may span lines)."""
    if isinstance(err, LipsyncError):
        return str(err)
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[-1][:300] if lines else 'no message'}"


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(xs)) if xs else math.nan


def run_benchmark(
    data: str | os.PathLike,
    test_list: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: BenchmarkOptions = BenchmarkOptions(),
    *,
    generator=None,
    syncnet_model=None,
    progress: ProgressFn | None = None,
) -> BenchmarkReport:
    """Run the protocol; write ``out_dir/videos/*.mp4`` (the dubbed clips). Per-clip failures become rows
    with a
    status, never abort the run. ``generator`` / ``syncnet_model`` bypass checkpoint loading (tests)."""
    from lipsync_cli.dub import DubOptions, dub
    from lipsync_cli.evaluate import metrics
    from lipsync_cli.evaluate.lse import load_syncnet
    from lipsync_cli.train.data import fit_face

    data, out_dir = Path(data), Path(out_dir)
    if not data.is_dir():
        raise InputNotFound(f"dataset folder not found: {data}")
    clips = read_test_list(test_list, data)
    if options.limit is not None:
        clips = clips[: options.limit]
    from lipsync_cli.device import resolve_device

    device = resolve_device(options.device)
    if syncnet_model is None:
        syncnet_model = load_syncnet(options.syncnet, device=device)
    syncnet_model = syncnet_model.to(device).eval()
    if generator is None:
        if options.checkpoint is None:
            raise BadOption("the benchmark needs a generator: pass --checkpoint")
        from lipsync_cli.checkpoint import load_generator

        generator = load_generator(options.checkpoint, arch=options.arch, device=device)
    notes: list[str] = []
    say = notes.append

    # the metric networks first: a wrong weight file is reported before any clip is scored
    lpips_metric = inception = None
    if options.reconstruction:
        try:
            lpips_metric = metrics.LPIPSMetric(device)
        except WeightsNotFound as err:
            say(f"LPIPS skipped: {err}")
        wts = metrics.find_inception(options.inception)
        if wts is None:
            say("FID skipped: Inception-v3 weights are not available locally (pass --inception PATH)")
        else:
            inception = metrics.InceptionFeatures(wts, device)

    def score(frames, pcm, name, first_frame: int = 0) -> LSEResult:
        try:
            s = score_clip(
                syncnet_model, to_syncnet_frames(frames), pcm, batch_size=options.batch_size, device=device
            )
        except LipsyncError as err:
            return LSEResult(video=name, status=status_of(err), error=str(err))
        return LSEResult(
            video=name,
            lse_d=s.lse_d,
            lse_c=s.lse_c,
            offset=s.offset,
            n_frames=len(frames),
            n_windows=s.n_windows,
            first_frame=first_frame,
            curve=list(s.curve),
        )

    runs: dict[str, range] = {}

    def run_of(clip: str) -> range:
        """The clip's scored frames; a gap (a frame without a face) is said once in the notes."""
        if clip not in runs:
            runs[clip] = clip_run(data, clip)
            idx = frame_indices(data / clip)
            if len(idx) != len(runs[clip]) or idx[0] != 0:
                r = runs[clip]
                say(f"{clip}: frames {_ranges(idx)} exist (prepare found no face in the others); "
                    f"scored frames {r.start}-{r.stop - 1}, the longest run, with the audio from "
                    f"{r.start / DEFAULT_FPS:.2f} s")
        return runs[clip]

    # --- the reference row: real videos with their own audio ---
    real: list[LSEResult] = []
    for clip in clips:
        if progress:
            progress("real", 1, len(clips))
        try:
            run = run_of(clip)
            pcm = read_pcm16(clip_audio(data, clip))[audio_offset(run):]  # frame run.start at sample 0
            real.append(score(clip_frames(data, clip, run), pcm, clip, first_frame=run.start))
        except Exception as err:  # noqa: BLE001  one bad clip is a row, never the end of the batch
            real.append(LSEResult(video=clip, status=_status(err), error=_message(err)))

    # --- pairs ---
    if options.reconstruction:
        pairs: list[tuple[str, str | None]] = [(c, c) for c in clips]
    elif options.pairs is not None:
        pairs = list(read_pairs(options.pairs))
    else:
        pairs = random_pairs(clip_durations(data, clips), clips, options.seed)

    mouths_real: list[np.ndarray] = []
    mouths_fake: list[np.ndarray] = []

    work = out_dir / "work"
    videos = out_dir / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    dub_opts = DubOptions(
        checkpoint=options.checkpoint,
        arch=options.arch,
        device=device,
        precision="fp32",
        blend="paste",
        silence="model",  # the papers' protocol: the generator re-draws every frame, pauses included
        batch_size=options.dub_batch_size,
        crf=18,
    )
    results: list[PairResult] = []
    resized: list[str] = []  # clips whose crops are not the generator's input size
    for video_clip, audio_clip in pairs:
        if progress:
            progress("dub", 1, len(pairs))
        row = PairResult(video=video_clip, audio=audio_clip or "")
        results.append(row)
        if audio_clip is None:
            row.status, row.error = "no_pair", "no other test clip has audio no longer than this video"
            continue
        try:
            run = run_of(video_clip)
            row.first_frame = run.start
            frames = clip_frames(data, video_clip, run)
            if any(f.shape[:2] != (FACE_SIZE, FACE_SIZE) for f in frames) and video_clip not in resized:
                resized.append(video_clip)
            # the generator's input, as training reads the crops: the dubbed video and the image metrics
            # are at this size, whatever the size of each crop
            frames = [fit_face(f) for f in frames]  # (FACE_SIZE, FACE_SIZE, 3) each
            h, w = frames[0].shape[:2]
            src = _write_clip_video(frames, work / f"{_safe(video_clip)}.mp4")
            speech = clip_audio(data, audio_clip)
            if audio_clip == video_clip and run.start:  # its own audio, from the first scored frame on
                speech = _write_pcm16(read_pcm16(speech)[audio_offset(run):], work / f"{_safe(video_clip)}.wav")
            out = videos / f"{_safe(video_clip)}__{_safe(audio_clip)}.mp4"
            generated: dict[int, np.ndarray] = {}
            sink = (lambda i, f, g=generated: g.__setitem__(i, f.copy())) if options.reconstruction else None
            # the clips are face crops: the face box is the whole frame; dub gives each frame the mel window
            # of the generator's own lead (generator.mel_lead, from its checkpoint)
            dub(src, speech, out, replace(dub_opts, box=(0, 0, w, h)), model=generator, frame_sink=sink)
            row.output = str(out)
            row.lse = score(read_frames(out), read_pcm16(out), str(out))
            if row.lse.status != "ok":
                row.status, row.error = row.lse.status, row.lse.error
            if options.reconstruction:
                n = min(len(frames), len(generated))
                row.n_frames = n
                row.psnr = _mean([metrics.psnr(frames[i], generated[i]) for i in range(n)])
                row.ssim = _mean([metrics.ssim(frames[i], generated[i]) for i in range(n)])
                if lpips_metric is not None:
                    row.lpips = _mean([lpips_metric(frames[i], generated[i]) for i in range(n)])
                if inception is not None:
                    mouths_real += [metrics.mouth_crop(frames[i]) for i in range(n)]
                    mouths_fake += [metrics.mouth_crop(generated[i]) for i in range(n)]
        except Exception as err:  # noqa: BLE001  one bad clip is a row, never the end of the batch
            row.status, row.error = _status(err), _message(err)
            row.lse = row.psnr = row.ssim = row.lpips = None

    if resized:
        say(f"face crops of {len(resized)} of {len(clips)} clips resized to {FACE_SIZE}x{FACE_SIZE} "
            f"(the generator's input, as training reads them) before dubbing"
            + ("; PSNR, SSIM, LPIPS and FID compare at that size" if options.reconstruction else ""))

    fid = None
    if inception is not None and len(mouths_real) >= 2:
        try:
            fid = metrics.fid(mouths_real, mouths_fake, inception)
        except Exception as err:  # noqa: BLE001  the other metrics still stand
            say(f"FID failed: {_message(err)}")

    name = options.name or (Path(options.checkpoint).name if options.checkpoint else "generator")
    ok = [r for r in results if r.status == "ok"]
    real_sum = summarize(real)
    gen_sum = summarize(
        [r.lse for r in results if r.lse is not None]
        + [LSEResult(video=r.video, status=r.status) for r in results if r.lse is None]
    )
    summary = {
        "protocol": "reconstruction (own audio)"
        if options.reconstruction
        else ("pairs file" if options.pairs else f"random pairs, seed {options.seed}"),
        "test_clips": len(clips),
        "vshift": VSHIFT,
        "rows": [
            {
                "method": "Real videos",
                "lse_d": real_sum["lse_d"],
                "lse_c": real_sum["lse_c"],
                "count": real_sum["scored"],
                "failed": real_sum["failed"],
            },
            {
                "method": name,
                "lse_d": gen_sum["lse_d"],
                "lse_c": gen_sum["lse_c"],
                "count": gen_sum["scored"],
                "failed": len(results) - len(ok),
                "fid": fid,
                "psnr": _mean([r.psnr for r in ok]) if options.reconstruction else None,
                "ssim": _mean([r.ssim for r in ok]) if options.reconstruction else None,
                "lpips": (_mean([r.lpips for r in ok]) if lpips_metric is not None else None)
                if options.reconstruction
                else None,
            },
        ],
    }
    return BenchmarkReport(real=real, pairs=results, summary=summary, notes=notes)


def markdown_table(report: BenchmarkReport) -> str:
    """A table shaped like the papers' table 1: one row per method, arrows for the better direction."""
    rows = report.summary["rows"]
    recon = any(r.get("psnr") is not None for r in rows)
    cols = [("LSE-D ↓", "lse_d"), ("LSE-C ↑", "lse_c")]
    if any(r.get("fid") is not None for r in rows):
        cols.append(("FID ↓", "fid"))
    if recon:
        cols += [("PSNR ↑", "psnr"), ("SSIM ↑", "ssim"), ("LPIPS ↓", "lpips")]
    cols.append(("videos", "count"))

    def fmt(v, key):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "–"
        if key == "count":
            return str(v)
        return f"{v:.4f}" if key in ("ssim", "lpips") else f"{v:.3f}"

    lines = [
        f"Protocol: {report.summary['protocol']}; {report.summary['test_clips']} test clips.",
        "",
        "| Method | " + " | ".join(c for c, _ in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(fmt(r.get(k), k) for _, k in cols) + " |")
    for n in report.notes:
        lines.append(f"\n_{n}_")
    return "\n".join(lines) + "\n"
