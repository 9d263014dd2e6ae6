"""LSE-D / LSE-C: SyncNet's lip-sync error, computed the way Wav2Lip's and SyncNet's evaluation scripts do.

The protocol (joonson/syncnet_python ``SyncNetInstance.evaluate``, Wav2Lip ``evaluation/scores_LSE``):

1. frames at 25 fps, each resized to 224x224 (bilinear), BGR, pixel values 0..255, no normalisation;
2. audio as 16 kHz mono 16-bit PCM; MFCC (13 coefficients, 100 steps/s) of the raw int16 sample values;
3. ``L = min(n_frames, n_samples // 640)``; windows ``v = 0 .. L - 6`` (the reference stops one window short):
   frames ``v .. v+4`` against MFCC steps ``4v .. 4v+19``;
4. each window's lip embedding is compared with the audio embeddings of windows ``v-15 .. v+15`` (zero vectors
   beyond either end) by Euclidean distance (``pairwise_distance``, eps 1e-6); the distances are averaged over
   windows for each of the 31 offsets (the *curve*);
5. LSE-D = min of the curve, LSE-C = median - min, AV offset = 15 - argmin, in frames. Curve index k compares
   lip window v with audio window v + k - 15, so audio that lags the lips by d frames reports offset -d.

Two ways to get the frames: ``crop`` scores whole frames (the LRS protocol, for clips that are already face
crops), ``track`` follows the face and cuts SyncNet's crop around it (``run_pipeline.py``'s ``crop_video``).
Everything here is vectorised and batched, and equal (rtol 1e-4) to a literal transcription of the reference.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lipsync_cli.constants import SAMPLE_RATE, SYNC_T
from lipsync_cli.errors import (
    AudioTooShort,
    BadOption,
    InputNotFound,
    LipsyncError,
    MediaError,
    NoAudioStream,
    NoFaceError,
)
from lipsync_cli.evaluate.mfcc import MFCC_RATE, mfcc

log = logging.getLogger(__name__)

SYNC_FPS = 25  # the protocol's frame rate: other videos are resampled to it
assert SAMPLE_RATE % SYNC_FPS == 0 and MFCC_RATE % SYNC_FPS == 0
SAMPLES_PER_FRAME = SAMPLE_RATE // SYNC_FPS  # 640
MFCC_PER_FRAME = MFCC_RATE // SYNC_FPS  # 4
MFCC_WINDOW = SYNC_T * MFCC_PER_FRAME  # 20 MFCC steps per 5-frame window
VSHIFT = 15  # offsets -15..+15 frames are tried
CROP_SIZE = 224  # SyncNet's input side, px
MIN_FRAMES = SYNC_T + 1  # the reference scores windows 0..L-6, so it needs L >= 6
CROP_SCALE = 0.4  # run_pipeline.py --crop_scale: padding around the face box
CROP_PAD_VALUE = 110  # grey the reference pads frames with before cropping near the border
MEDFILT_KERNEL = 13  # frames: the median filter run_pipeline.py applies to box centre and size
MODES = ("crop", "track")
IOU_THRESHOLD = 0.5  # run_pipeline.py track_shot: minimum IoU between consecutive detections of one face
MAX_GAP = 25  # run_pipeline.py --num_failed_det: frames a face may be missed before its track ends

ProgressFn = Callable[[str, int, "int | None"], None]  # (stage, advanced, total)


@dataclass(frozen=True)
class LSEOptions:
    """How ``lipsync eval lse`` scores videos; the CLI's defaults come from here."""

    mode: str = "track"  # "crop" (whole frames, LRS protocol) or "track" (face track + SyncNet crop)
    vshift: int = VSHIFT
    batch_size: int = 20  # 5-frame windows per SyncNet forward pass
    device: str = "auto"  # auto: cuda > mps > cpu
    detector: str = "s3fd"  # track mode only
    detector_weights: Path | None = None
    det_size: int | None = None  # None: 320 px on a CPU, 640 on a GPU (as `lipsync dub`)
    min_face_score: float = 0.5
    crop_scale: float = CROP_SCALE

    def validate(self) -> None:
        if self.mode not in MODES:
            raise BadOption(f"--mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.vshift < 1:
            raise BadOption(f"--vshift must be at least 1, got {self.vshift}")
        if self.batch_size < 1:
            raise BadOption(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.crop_scale < 0:
            raise BadOption(f"crop scale must be >= 0, got {self.crop_scale}")


@dataclass(frozen=True)
class SyncScore:
    """SyncNet's verdict on one clip. Distances are Euclidean distances between 1024-d embeddings."""

    lse_d: float  # min over offsets of the mean distance
    lse_c: float  # median - min
    offset: int  # vshift - argmin, frames
    curve: tuple[float, ...]  # mean distance per curve index k, which stands for offset vshift - k
    n_windows: int
    vshift: int = VSHIFT

    def offsets(self) -> list[int]:
        """The AV offset each curve entry stands for (``vshift - index``), as the reference reports it."""
        return [self.vshift - k for k in range(len(self.curve))]


@dataclass
class LSEResult:
    """One row of the results table: a score, or the reason there is none (``status`` != "ok")."""

    video: str
    status: str = "ok"  # ok | too_short | no_audio | no_face | unreadable | error
    lse_d: float | None = None
    lse_c: float | None = None
    offset: int | None = None
    n_frames: int = 0  # frames scored (after resampling / track cut)
    n_windows: int = 0
    first_frame: int = 0  # track mode: where the scored face track starts
    error: str | None = None
    curve: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# the computation


def n_windows(n_frames: int, n_samples: int) -> int:
    """Windows the reference scores: ``min(n_frames, n_samples // 640) - 5`` (may be <= 0: too short)."""
    return min(n_frames, n_samples // SAMPLES_PER_FRAME) - SYNC_T


def to_syncnet_frames(frames: Iterable[np.ndarray]) -> np.ndarray:
    """(T, 224, 224, 3) uint8 BGR: every frame resized with OpenCV's default bilinear filter, as the
    reference."""
    import cv2

    out = [
        f if f.shape[:2] == (CROP_SIZE, CROP_SIZE) else cv2.resize(f, (CROP_SIZE, CROP_SIZE)) for f in frames
    ]
    if not out:
        return np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    return np.stack(out)


def sync_embeddings(
    model, frames: np.ndarray, pcm16: np.ndarray, *, batch_size: int = 20, device: str = "cpu"
):
    """Lip and audio embeddings of every window: two (W, 1024) float32 CPU tensors.

    frames: (T, 224, 224, 3) uint8 BGR at 25 fps; pcm16: 16 kHz mono int16 samples (any integer-valued array).
    """
    import torch

    w = n_windows(len(frames), len(pcm16))
    if w <= 0:
        raise AudioTooShort(
            f"{len(frames)} frames / {len(pcm16) / SAMPLE_RATE:.2f} s of audio: SyncNet needs at "
            f"least {MIN_FRAMES} frames ({MIN_FRAMES / SYNC_FPS:.2f} s) of both"
        )
    cc = torch.from_numpy(mfcc(pcm16, SAMPLE_RATE).T.astype(np.float32))  # (13, n_steps)
    lip, aud = [], []
    with torch.no_grad():
        for start in range(0, w, batch_size):
            stop = min(w, start + batch_size)
            # video windows: frames v..v+4 on the depth axis
            clip = torch.from_numpy(frames[start : stop + SYNC_T - 1]).to(device)  # (n+4, 224, 224, 3) uint8
            clip = clip.permute(3, 0, 1, 2).float()  # (3, n+4, 224, 224)
            vid = clip.unfold(1, SYNC_T, 1).permute(1, 0, 4, 2, 3)  # (n, 3, 5, 224, 224)
            lip.append(model.forward_lip(vid.contiguous()).float().cpu())
            # audio windows: MFCC steps 4v..4v+19
            seg = cc[:, start * MFCC_PER_FRAME : (stop - 1) * MFCC_PER_FRAME + MFCC_WINDOW]  # (13, ...)
            win = seg.unfold(1, MFCC_WINDOW, MFCC_PER_FRAME).permute(1, 0, 2)  # (n, 13, 20)
            aud.append(model.forward_aud(win.unsqueeze(1).contiguous().to(device)).float().cpu())
    return torch.cat(lip), torch.cat(aud)


def offset_distances(lip, aud, vshift: int = VSHIFT, chunk: int = 256):
    """(W, 2*vshift+1) distances: row i, column k = |lip[i] - aud[i + k - vshift]| (zero audio beyond the
    ends)."""
    import torch
    import torch.nn.functional as F

    n = lip.shape[0]
    aud_p = F.pad(aud, (0, 0, vshift, vshift))  # (W + 2v, D)
    idx = torch.arange(2 * vshift + 1)[None, :]  # (1, 2v+1)
    out = []
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(n, s + chunk))[:, None]  # (c, 1)
        cand = aud_p[rows + idx]  # (c, 2v+1, D)
        out.append(F.pairwise_distance(lip[s : s + chunk, None, :].expand_as(cand), cand))  # (c, 2v+1)
    return torch.cat(out)


def scores_from_distances(dists, vshift: int = VSHIFT) -> SyncScore:
    """LSE-D, LSE-C and the offset from the (W, 2v+1) distance matrix, reduced as the reference reduces it."""
    import torch

    curve = dists.t().mean(1)  # (2v+1,)
    minval, minidx = torch.min(curve, 0)
    conf = torch.median(curve) - minval
    return SyncScore(
        lse_d=float(minval),
        lse_c=float(conf),
        offset=int(vshift - int(minidx)),
        curve=tuple(float(c) for c in curve),
        n_windows=int(dists.shape[0]),
        vshift=vshift,
    )


def score_clip(
    model,
    frames: np.ndarray,
    pcm16: np.ndarray,
    *,
    vshift: int = VSHIFT,
    batch_size: int = 20,
    device: str = "cpu",
) -> SyncScore:
    """Score one clip: (T, 224, 224, 3) uint8 BGR frames at 25 fps and its 16 kHz int16 audio."""
    lip, aud = sync_embeddings(model, frames, pcm16, batch_size=batch_size, device=device)
    return scores_from_distances(offset_distances(lip, aud, vshift), vshift)


# ----------------------------------------------------------------------------------------------------------
# media


def _ffmpeg() -> str:
    try:
        from lipsync_cli.media.ffmpeg import find_ffmpeg

        return str(find_ffmpeg())
    except ImportError:  # lipsync_cli.media not there yet
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()


def read_pcm16(path: str | os.PathLike) -> np.ndarray:
    """The audio of ``path`` as 16 kHz mono int16 on the file's timeline, as the reference extracts it.

    The reference runs ``ffmpeg -async 1 -ac 1 -vn -acodec pcm_s16le -ar 16000`` and reads the wav as int16.
    ``-async 1`` stood for ``aresample=async=1:min_hard_comp=0.1:first_pts=0``: an audio stream that starts
    late is padded with silence so that sample 0 is at time 0. Recent ffmpeg accepts ``-async 1`` but no
    longer pads, so the filter is spelt out here. For audio that starts at 0 (every generated video) the
    samples are bit-identical to the reference command's.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"file not found: {path}")
    args = [
        _ffmpeg(),
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-i",
        str(path),
        "-vn",
        "-map",
        "0:a:0",
        "-af",
        "aresample=async=1:min_hard_comp=0.100000:first_pts=0",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-acodec",
        "pcm_s16le",
        "-f",
        "s16le",
        "pipe:1",
    ]
    from lipsync_cli.media.ffmpeg import run_child

    proc = run_child(args, check=False, capture_output=True)
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        if "matches no streams" in err or "does not contain any stream" in err:
            raise NoAudioStream(f"{path} has no audio stream", "LSE needs the speech the lips should follow")
        raise MediaError(
            f"cannot decode the audio of {path}: {err.splitlines()[-1] if err else 'ffmpeg failed'}"
        )
    pcm = np.frombuffer(proc.stdout, dtype="<i2").astype(np.int16)
    if pcm.size == 0:
        raise NoAudioStream(f"{path} has an empty audio stream")
    return pcm


def read_frames(path: str | os.PathLike, fps: float = SYNC_FPS) -> list[np.ndarray]:
    """Every frame of ``path`` resampled to ``fps`` (BGR uint8)."""
    from lipsync_cli.media.decode import FrameReader

    with FrameReader(path, fps=fps) as reader:
        return list(reader)


def _resized_frames(
    path: str | os.PathLike,
    keep: range | None = None,
    boxes: np.ndarray | None = None,
    crop_scale: float = CROP_SCALE,
) -> np.ndarray:
    """Stream the video at 25 fps and keep only 224x224 images (whole frames, or SyncNet crops of
    ``boxes``)."""
    import cv2

    from lipsync_cli.media.decode import FrameReader

    out = []
    with FrameReader(path, fps=SYNC_FPS) as reader:
        for i, frame in enumerate(reader):
            if keep is not None and i not in keep:
                if i >= keep.stop:
                    break
                continue
            if boxes is None:
                out.append(cv2.resize(frame, (CROP_SIZE, CROP_SIZE)))
            else:
                out.append(syncnet_crop(frame, boxes[i - keep.start], crop_scale))
    return to_syncnet_frames(out)


# ----------------------------------------------------------------------------------------------------------
# track mode: SyncNet's face crop


def crop_params(boxes: np.ndarray) -> np.ndarray:
    """(N, 3) [centre x, centre y, half size] per frame from (N, 4) x1 y1 x2 y2 boxes, each median-filtered
    over 13
    frames with zero padding at the ends (``scipy.signal.medfilt``, as ``run_pipeline.py`` does)."""
    b = np.asarray(boxes, dtype=np.float64)
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    x = (b[:, 0] + b[:, 2]) / 2
    y = (b[:, 1] + b[:, 3]) / 2
    return np.stack([medfilt_zero(v, MEDFILT_KERNEL) for v in (x, y, s)], axis=1)


def medfilt_zero(v: np.ndarray, kernel: int) -> np.ndarray:
    """``scipy.signal.medfilt(v, kernel)`` for an odd ``kernel``: the median of each ``kernel``-wide window, zeros
    beyond the ends; also for signals shorter than the kernel, where scipy gives the same numbers with a warning."""
    half = kernel // 2
    padded = np.pad(np.asarray(v, dtype=np.float64), half)
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, kernel), axis=1)


def syncnet_crop(frame: np.ndarray, params: Sequence[float], crop_scale: float = CROP_SCALE) -> np.ndarray:
    """(224, 224, 3) crop around a face: ``params`` = (centre x, centre y, half size ``bs``) in pixels.

    As ``run_pipeline.py``'s ``crop_video``: the frame is padded with grey 110 by ``int(bs * (1 + 2cs))``;
    the crop
    spans ``bs`` above the centre to ``bs (1 + 2cs)`` below it, and ``bs (1 + cs)`` either side (the mouth
    sits in
    its middle), then is resized to 224x224.
    """
    import cv2

    mx, my, bs = (float(v) for v in params)
    cs = crop_scale
    bsi = int(bs * (1 + 2 * cs))
    padded = np.pad(frame, ((bsi, bsi), (bsi, bsi), (0, 0)), mode="constant", constant_values=CROP_PAD_VALUE)
    my, mx = my + bsi, mx + bsi
    face = padded[
        int(my - bs) : int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)) : int(mx + bs * (1 + cs))
    ]
    if face.size == 0:
        face = np.full((2, 2, 3), CROP_PAD_VALUE, np.uint8)
    return cv2.resize(face, (CROP_SIZE, CROP_SIZE))


def face_tracks(
    faces: Sequence[np.ndarray],
    min_score: float = 0.5,
    iou_threshold: float = IOU_THRESHOLD,
    max_gap: int = MAX_GAP,
    cuts: Sequence[int] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group per-frame detections into face tracks with the dub's tracker, set up as ``run_pipeline.py``'s
    ``track_shot``.

    :func:`lipsync_cli.faces.track.link_tracks` with the reference's rules: a detection continues a track when its
    IoU with the track's last box is > ``iou_threshold`` (no centre-distance rule), a track ends when ``max_gap``
    frames pass without one (``--num_failed_det``: frames at most ``max_gap`` apart), and no track crosses a shot
    cut (``cuts``: the frames that start a shot; the reference tracks each scene on its own).
    ``faces[i]`` is an (N, 5) array [x1, y1, x2, y2, score] for frame i.
    Returns (frame indices (K,), boxes (K, 4)) per track, longest first (ties: earliest first).
    """
    from lipsync_cli.faces.track import link_tracks

    linked = link_tracks(
        faces, cuts=cuts, min_score=min_score, max_gap=max_gap - 1, min_iou=iou_threshold, max_shift=0.0
    )
    tracks = [(np.array(t.frames), np.stack(t.boxes)) for t in linked]
    tracks.sort(key=lambda t: (-(t[0][-1] - t[0][0]), t[0][0]))
    return tracks


def interpolate_track(frames: np.ndarray, boxes: np.ndarray) -> tuple[int, int, np.ndarray]:
    """(first, stop, (stop - first, 4) boxes): the track's frames with gaps linearly interpolated (as the
    reference's ``interp1d``)."""
    first, stop = int(frames[0]), int(frames[-1]) + 1
    span = np.arange(first, stop)
    return first, stop, np.stack([np.interp(span, frames, boxes[:, c]) for c in range(4)], axis=1)


def face_segment(raw: Sequence[np.ndarray | None]) -> tuple[int, int, np.ndarray]:
    """From one box (or None) per frame: the stretch from the first to the last frame with a face, gaps
    interpolated: (first, stop, (stop - first, 4) boxes)."""
    have = [i for i, b in enumerate(raw) if b is not None]
    if not have:
        raise NoFaceError(
            "no face found in any frame", "score it with --mode crop if the frames are face crops"
        )
    known = np.stack([np.asarray(raw[i], dtype=np.float64)[:4] for i in have])  # (K, 4)
    return interpolate_track(np.array(have), known)


# ----------------------------------------------------------------------------------------------------------
# videos


def load_syncnet(path: str | os.PathLike | None = None, device: str = "cpu", offline: bool | None = None):
    """SyncNet v2 from ``path``, or the registry's ``syncnet_v2`` (``lipsync weights download
    syncnet_v2``)."""
    from lipsync_cli.models.syncnet_v2 import load_syncnet_v2

    if path is None:
        try:
            from lipsync_cli import weights
        except ImportError:
            from lipsync_cli.errors import WeightsNotFound

            raise WeightsNotFound(
                "no SyncNet v2 weights given", "pass --syncnet PATH/syncnet_v2.model"
            ) from None
        path = weights.resolve("syncnet_v2", None, offline=offline)
    return load_syncnet_v2(path, device=device)


def _det_size(options: LSEOptions) -> int:
    return options.det_size or (320 if options.device == "cpu" else 640)


def load_eval_detector(options: LSEOptions):
    """The face detector for track mode (weights from the registry when not given)."""
    from lipsync_cli.faces import load_detector

    wts = options.detector_weights
    if wts is None and options.detector == "s3fd":
        from lipsync_cli import weights

        wts = weights.resolve("s3fd", None)
    return load_detector(options.detector, weights=wts, device=options.device, det_size=_det_size(options))


def track_crops(
    path: str | os.PathLike,
    detector,
    options: LSEOptions = LSEOptions(),
    progress: Callable[[int], None] | None = None,
) -> tuple[int, np.ndarray]:
    """Follow the face through the video at 25 fps; (first frame, (N, 224, 224, 3) SyncNet crops) of the
    longest face track, which never spans a shot cut (see :func:`face_tracks`)."""
    from lipsync_cli.faces.track import track_video

    track = track_video(path, detector, fps=SYNC_FPS, det_size=_det_size(options), progress=progress)
    tracks = face_tracks(track.faces, options.min_face_score, cuts=track.cuts)
    if not tracks:
        raise NoFaceError(
            "no face found in any frame", "score it with --mode crop if the frames are face crops"
        )
    first, stop, boxes = interpolate_track(*tracks[0])
    params = crop_params(boxes)
    return first, _resized_frames(path, range(first, stop), params, options.crop_scale)


def _resolved(options: LSEOptions) -> LSEOptions:
    """``options`` validated, with "auto" replaced by the device it stands for."""
    from dataclasses import replace

    from lipsync_cli.device import resolve_device

    options.validate()
    return (
        options
        if options.device in ("cpu", "cuda")
        else replace(options, device=resolve_device(options.device))
    )


def score_video(
    path: str | os.PathLike,
    model,
    options: LSEOptions = LSEOptions(),
    *,
    detector=None,
    progress: Callable[[int], None] | None = None,
) -> LSEResult:
    """Score one video file; raises domain errors (see :func:`score_videos` for the batch that never
    aborts)."""
    options = _resolved(options)
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"video not found: {path}")
    pcm = read_pcm16(path)
    # frame 0 is the first video frame; the audio is on the file's timeline: skip what precedes the video (0 s
    # in generated videos, where this is the reference's computation exactly)
    from lipsync_cli.media.probe import probe

    pcm = pcm[round(probe(path).start_time * SAMPLE_RATE) :]
    first = 0
    if options.mode == "crop":
        frames = _resized_frames(path)
    else:
        if detector is None:
            detector = load_eval_detector(options)
        first, frames = track_crops(path, detector, options, progress)
        # the audio of the tracked stretch only (run_pipeline.py cuts audio.wav at the track's start/end)
        pcm = pcm[first * SAMPLES_PER_FRAME : (first + len(frames)) * SAMPLES_PER_FRAME]
    score = score_clip(
        model, frames, pcm, vshift=options.vshift, batch_size=options.batch_size, device=options.device
    )
    return LSEResult(
        video=str(path),
        lse_d=score.lse_d,
        lse_c=score.lse_c,
        offset=score.offset,
        n_frames=len(frames),
        n_windows=score.n_windows,
        first_frame=first,
        curve=list(score.curve),
    )


def status_of(err: Exception) -> str:
    """The status column for a per-video failure."""
    if isinstance(err, AudioTooShort):
        return "too_short"
    if isinstance(err, NoAudioStream):
        return "no_audio"
    if isinstance(err, NoFaceError):
        return "no_face"
    if isinstance(err, (MediaError, InputNotFound)):
        return "unreadable"
    return "error"


def score_videos(
    paths: Sequence[str | os.PathLike],
    options: LSEOptions = LSEOptions(),
    *,
    model=None,
    syncnet: str | os.PathLike | None = None,
    detector=None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[LSEResult]:
    """Score every video; a video that cannot be scored gets a row with its status and error, never aborts the
    batch. ``progress(done, total, path)`` is called before each video and once at the end."""
    options = _resolved(options)
    if model is None:
        model = load_syncnet(syncnet, device=options.device)
    model = model.to(options.device).eval()
    if options.mode == "track" and detector is None:
        detector = load_eval_detector(options)
    results = []
    for k, p in enumerate(paths):
        if progress is not None:
            progress(k, len(paths), str(p))
        try:
            results.append(score_video(p, model, options, detector=detector))
        except LipsyncError as err:
            log.info("%s: %s", p, err)
            results.append(LSEResult(video=str(p), status=status_of(err), error=str(err)))
        except (ValueError, MemoryError, RuntimeError, OSError) as err:  # one bad video never loses the others
            log.warning("%s: %s", p, err, exc_info=log.isEnabledFor(logging.DEBUG))
            results.append(LSEResult(video=str(p), status="error", error=f"{type(err).__name__}: {err}"))
    if progress is not None:
        progress(len(paths), len(paths), "")
    return results


def summarize(results: Sequence[LSEResult]) -> dict:
    """Dataset figures: plain means over the scored videos, with the counts."""
    ok = [r for r in results if r.ok]

    def mean(xs):
        return float(np.mean(xs)) if xs else math.nan

    return {
        "videos": len(results),
        "scored": len(ok),
        "failed": len(results) - len(ok),
        "lse_d": mean([r.lse_d for r in ok]),
        "lse_c": mean([r.lse_c for r in ok]),
        "statuses": {s: sum(r.status == s for r in results) for s in sorted({r.status for r in results})},
    }
