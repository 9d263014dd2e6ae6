"""LRS2 -> Wav2Lip's preprocessed layout (``lipsync prepare``).

Input: ``LRS2_ROOT/main/<speaker>/<clip>.mp4`` with ``LRS2_ROOT/{train,val,test}.txt`` lists of
``speaker/clip`` lines (test.txt's extra fields are ignored), and optionally
``LRS2_ROOT/pretrain/<speaker>/<clip>.mp4``.
Output, readable by Wav2Lip's own training scripts as it is:
    OUT/<speaker>/<clip>/<i>.jpg      face crop of frame i (0-based; frames without a face are absent), the
                                      frame's own box, so its size varies within a clip as the face moves
    OUT/<speaker>/<clip>/audio.wav    16 kHz mono PCM
    OUT/filelists/{train,val,test}.txt  ``speaker/clip`` lines of the clips that were prepared
Pretrain clips go to ``OUT/pretrain/<speaker>/<clip>`` (listed in ``filelists/pretrain.txt``) so they never
collide with ``main`` clips of the same name.

Each clip is written into a temporary folder beside its destination and renamed when complete, so a rerun
skips finished clips and never sees half-written ones. Failed clips (no face, no audio, undecodable) are
reported, not fatal: ``OUT/prepare_failures.tsv`` lists them with the reason. An output that cannot be written
(disk full, no permission) is no fault of a clip: it stops the run with a WriteError, the unfinished clip's
folder removed.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lipsync_cli.constants import DEFAULT_FPS, DEFAULT_PADS, SAMPLE_RATE, SYNC_T
from lipsync_cli.errors import BadOption, InputNotFound, LipsyncError, MediaError, WriteError
from lipsync_cli.faces.detect import DEFAULT_DETECTOR, default_det_size
from lipsync_cli.files import atomic_write, write_error

log = logging.getLogger(__name__)

LIST_SPLITS = ("train", "val", "test")
FAILURES_FILE = "prepare_failures.tsv"


@dataclass(frozen=True)
class PrepareOptions:
    """How clips are prepared.

    workers: clips processed in parallel (processes; GPUs, when present, are shared round-robin).
    detector / detector_weights / det_size: the face detector (see ``lipsync_cli.faces.load_detector``); by
        default the one ``lipsync dub`` uses (S3FD), at its size on each device (det_size None: 320 px on a CPU,
        640 on a GPU), so the generator trains on crops like those a dub gives it.
    box: a fixed (x1, y1, x2, y2) face box in source pixels for every frame instead of a detector.
    device: "auto" (GPUs when present), "cpu", "cuda", "cuda:1"...
    fps: resample every clip to this frame rate (frames/s) before cropping; None keeps the source rate.
    pads: pixels added around each box (top, bottom, left, right), the same as ``lipsync dub --pads``.
    smooth_window: frames over which boxes are averaged (1: no smoothing).
    min_faces: a clip with fewer face frames fails (two expert windows by default).
    pretrain: also prepare ``pretrain/`` when it exists.
    jpeg_quality: 0-100.
    """

    workers: int = 1
    detector: str = DEFAULT_DETECTOR
    detector_weights: str | None = None
    det_size: int | None = None  # None: default_det_size(device), as dub
    box: tuple[int, int, int, int] | None = None
    device: str = "auto"
    fps: float | None = DEFAULT_FPS
    pads: tuple[int, int, int, int] = DEFAULT_PADS
    smooth_window: int = 5
    min_faces: int = 2 * SYNC_T
    pretrain: bool = False
    jpeg_quality: int = 95

    def __post_init__(self):
        if self.workers < 1:
            raise BadOption(f"--workers must be >= 1, got {self.workers}")
        if self.fps is not None and not self.fps > 0:
            raise BadOption(f"--fps must be > 0, got {self.fps}")
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            if not (0 <= x1 < x2 and 0 <= y1 < y2):
                raise BadOption(f"--box {self.box} is empty: give X1 Y1 X2 Y2 with X2 > X1 and Y2 > Y1")
        if self.min_faces < SYNC_T:
            raise BadOption(f"min_faces must be >= {SYNC_T} (one expert window)")
        if not 0 <= self.jpeg_quality <= 100:
            raise BadOption(f"jpeg quality must be in 0..100, got {self.jpeg_quality}")


@dataclass(frozen=True)
class ClipJob:
    src: Path  # the video
    name: str  # destination relative to OUT: "speaker/clip" or "pretrain/speaker/clip"
    split: str  # train / val / test / pretrain / all


@dataclass
class PrepareReport:
    """Outcome of a run: names of clips prepared now, found already finished, and failed (name, reason)."""

    prepared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    filelists: dict[str, Path] = field(default_factory=dict)
    frames: int = 0  # face crops written by this run


class FixedBoxDetector:
    """A "detector" that reports the same box in every frame (``--box``), for datasets framed around the
    face."""

    def __init__(self, box: tuple[int, int, int, int]):
        self.box = np.array([*box, 1.0], dtype=np.float32)

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        return [self.box[None].copy() for _ in frames]


def find_clips(lrs2_root: str | os.PathLike, pretrain: bool = False) -> list[ClipJob]:
    """The clips to prepare, in list order: the ``main`` clips of the split lists (or every ``main`` clip
    under split "all" when there are no lists), then ``pretrain`` clips when asked."""
    root = Path(lrs2_root)
    main = root / "main"
    if not main.is_dir():
        raise InputNotFound(
            f"not an LRS2 folder: {main} does not exist",
            "give the folder that holds main/ and train.txt / val.txt / test.txt",
        )
    jobs: list[ClipJob] = []
    seen: set[str] = set()
    lists = [s for s in LIST_SPLITS if (root / f"{s}.txt").is_file()]
    if lists:
        for split in lists:
            for line in (root / f"{split}.txt").read_text(encoding="utf-8").splitlines():
                name = line.split()[0] if line.strip() else ""
                if not name or name in seen:
                    continue
                seen.add(name)
                jobs.append(ClipJob(main / f"{name}.mp4", name, split))
    else:
        for p in sorted(main.glob("*/*.mp4")):
            name = f"{p.parent.name}/{p.stem}"
            jobs.append(ClipJob(p, name, "all"))
    if pretrain and (root / "pretrain").is_dir():
        for p in sorted((root / "pretrain").glob("*/*.mp4")):
            jobs.append(ClipJob(p, f"pretrain/{p.parent.name}/{p.stem}", "pretrain"))
    return jobs


def _extract_audio(src: Path, dst: Path) -> None:
    from lipsync_cli.media.ffmpeg import find_ffmpeg

    cmd = [
        find_ffmpeg(),
        "-nostdin",
        "-y",
        "-loglevel",
        "error",
        "-i",
        str(src),
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-c:a",
        "pcm_s16le",
        str(dst),
    ]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not dst.is_file() or dst.stat().st_size <= 44:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        if any("No space left on device" in m for m in msg):
            raise write_error(dst, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        raise LipsyncError(f"no audio extracted ({msg[-1] if msg else 'empty audio stream'})")


def _write_jpeg(path: Path, image: np.ndarray, quality: int, name: Path) -> None:
    """``image`` (BGR uint8) as a JPEG at ``path``. cv2.imwrite only returns False when the disk is full, so
    the bytes are encoded first and written here: the OSError says why. ``name``: the output a WriteError names.
    """
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise MediaError(f"cannot encode a {image.shape[1]}x{image.shape[0]} face crop as JPEG")
    try:
        path.write_bytes(buf.tobytes())
    except OSError as err:
        raise write_error(name, err) from None


def prepare_clip(job: ClipJob, out_root: Path, detector, options: PrepareOptions) -> int:
    """Write one clip's face crops and audio.wav under ``out_root/job.name``; return the number of crops.

    Raises LipsyncError (or a media error) naming why the clip cannot be used, WriteError when an output
    cannot be written (nothing of the clip is left then)."""
    from lipsync_cli.faces.track import TrackOptions, face_boxes, track_video
    from lipsync_cli.media.decode import FrameReader
    from lipsync_cli.media.probe import has_audio

    if not job.src.is_file():
        raise InputNotFound(f"video missing: {job.src}")
    if not has_audio(job.src):
        raise LipsyncError("no audio stream")
    final = out_root / job.name
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
    except OSError as err:
        raise write_error(final, err) from None
    try:
        track = track_video(job.src, detector, fps=options.fps, det_size=options.det_size)
        topts = TrackOptions(
            pads=options.pads, smooth=options.smooth_window > 1, smooth_window=max(1, options.smooth_window)
        )
        boxes = face_boxes(track, topts)
        n_faces = sum(b is not None for b in boxes)
        if n_faces < options.min_faces:
            raise LipsyncError(f"a face in only {n_faces} of {len(boxes)} frames (need {options.min_faces})")
        written = 0
        with FrameReader(job.src, fps=options.fps) as reader:
            for i, frame in enumerate(reader):
                if i >= len(boxes) or boxes[i] is None:
                    continue
                x1, y1, x2, y2 = boxes[i]
                _write_jpeg(tmp / f"{i}.jpg", frame[y1:y2, x1:x2], options.jpeg_quality, final / f"{i}.jpg")
                written += 1
        _extract_audio(job.src, tmp / "audio.wav")
        try:
            os.replace(tmp, final)  # the clip appears complete or not at all
        except OSError as err:
            raise write_error(final, err) from None
        return written
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --- workers
# -------------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _on_device(options: PrepareOptions, device: str) -> PrepareOptions:
    """``options`` with the detection size resolved for ``device`` (dub's default when not given)."""
    return dataclasses.replace(options, det_size=options.det_size or default_det_size(device))


def _make_detector(options: PrepareOptions, device: str):
    if options.box is not None:
        return FixedBoxDetector(options.box)
    from lipsync_cli.faces import load_detector

    return load_detector(options.detector, options.detector_weights, device=device,
                         det_size=_on_device(options, device).det_size)


def _devices(option: str) -> list[str]:
    if option != "auto":
        return [option]
    try:
        import torch

        n = torch.cuda.device_count()
    except ImportError:
        n = 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


def _init_worker(options: PrepareOptions, devices, threads: int) -> None:
    import cv2

    cv2.setNumThreads(threads)
    device = devices.get() if hasattr(devices, "get") else devices[0]
    _WORKER["detector"] = _make_detector(options, device)
    _WORKER["options"] = _on_device(options, device)


def _run_job(job: ClipJob, out_root: Path) -> tuple[str, int, str | None]:
    try:
        n = prepare_clip(job, out_root, _WORKER["detector"], _WORKER["options"])
        return job.name, n, None
    except WriteError:  # the output's fault, not the clip's: every later clip would fail the same way
        raise
    except Exception as err:  # noqa: BLE001  any failure of one clip is reported, not fatal
        return job.name, 0, f"{type(err).__name__}: {err}" if not isinstance(err, LipsyncError) else str(err)


def _clean_partials(out_root: Path) -> None:
    for d in out_root.glob("**/.*.tmp-*"):
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)


def prepare(
    lrs2_root: str | os.PathLike,
    out: str | os.PathLike,
    options: PrepareOptions = PrepareOptions(),
    detector=None,
    progress: Callable[[int, int, str, str], None] | None = None,
    limit: int | None = None,
) -> PrepareReport:
    """Prepare every clip of ``lrs2_root`` into ``out``; return what was done, skipped and failed (with
    reasons).

    ``detector``: an object with ``detect(frames) -> [(N, 5) boxes]`` used in this process instead of building
    one from ``options`` (then ``workers`` must be 1). ``progress(done, total, clip_name, status)`` is called
    once per clip with status "prepared", "skipped" or "failed". ``limit``: only the first ``limit`` clips.
    """
    out_root = Path(out)
    jobs = find_clips(lrs2_root, options.pretrain)
    if limit is not None:
        jobs = jobs[:limit]
    if detector is not None and options.workers > 1:
        raise BadOption("an injected detector runs in this process only: use workers=1")
    out_root.mkdir(parents=True, exist_ok=True)
    _clean_partials(out_root)
    report = PrepareReport()
    todo = []
    for job in jobs:
        if (out_root / job.name).is_dir():
            report.skipped.append(job.name)
        else:
            todo.append(job)
    total, done = len(jobs), len(report.skipped)
    if progress and report.skipped:
        progress(done, total, report.skipped[-1], "skipped")

    def record(name: str, n: int, err: str | None) -> None:
        nonlocal done
        done += 1
        if err is None:
            report.prepared.append(name)
            report.frames += n
        else:
            report.failed.append((name, err))
            log.warning("clip %s failed: %s", name, err)
        if progress:
            progress(done, total, name, "prepared" if err is None else "failed")

    if todo and options.workers == 1:
        device = _devices(options.device)[0]
        det = detector if detector is not None else _make_detector(options, device)
        _WORKER.update(detector=det, options=_on_device(options, device))
        for job in todo:
            record(*_run_job(job, out_root))
    elif todo:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = mp.get_context("spawn")
        devs = _devices(options.device)
        q = ctx.Queue()
        for i in range(options.workers):
            q.put(devs[i % len(devs)])
        threads = max(1, (os.cpu_count() or 1) // options.workers)
        with ProcessPoolExecutor(
            options.workers, mp_context=ctx, initializer=_init_worker, initargs=(options, q, threads)
        ) as pool:
            futures = [pool.submit(_run_job, job, out_root) for job in todo]
            try:
                for fut in as_completed(futures):
                    record(*fut.result())
            except BaseException:  # a WriteError (or Ctrl-C): start no further clip
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    # filelists of every finished clip, in list order
    finished = set(report.prepared) | set(report.skipped)
    lists: dict[str, list[str]] = {}
    for job in jobs:
        if job.name in finished:
            lists.setdefault(job.split, []).append(job.name)
    fl_dir = out_root / "filelists"
    fl_dir.mkdir(exist_ok=True)
    for split, names in lists.items():
        p = fl_dir / f"{split}.txt"
        _atomic_write(p, "".join(f"{n}\n" for n in names))
        report.filelists[split] = p
    fail_path = out_root / FAILURES_FILE
    if report.failed:
        _atomic_write(fail_path, "".join(f"{n}\t{why}\n" for n, why in sorted(report.failed)))
    elif fail_path.exists():
        fail_path.unlink()
    return report


def _atomic_write(path: Path, text: str) -> None:
    atomic_write(path, text)
