"""The dubbing pipeline: decode -> (detect) -> crop -> generate -> blend -> encode, streamed through bounded queues.

Memory does not grow with the video: frames flow through ffmpeg's decode pipe, one generator batch at a time, into
ffmpeg's encode pipe; each stage runs in its own thread (``render._EngineRun``, on ``lipsync_cli.engine``) and the
frames in flight are bounded in bytes. Face detection is a separate first pass over frames decoded at detection size
that keeps only the boxes, so smoothing can look ahead and behind without holding frames. The media layer (probe,
decode, the output frame sequence, encode) is ``lipsync_cli.media``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lipsync_cli import blend as blending
from lipsync_cli.audio import load_audio, mel_start, melspectrogram, n_output_frames
from lipsync_cli.constants import CUT_THRESHOLD, DEFAULT_FPS, ENHANCE_NOISE, MEL_WINDOW, SAMPLE_RATE
from lipsync_cli.device import DEVICES, PRECISIONS, import_torch, resolve_device, resolve_precision
from lipsync_cli.engine import CpuMeter, CpuUse
from lipsync_cli.errors import BadOption, InputNotFound, NoFaceError
from lipsync_cli.faces.detect import DEFAULT_DETECTOR
from lipsync_cli.faces.track import Box, Track, TrackOptions, check_box, face_boxes, video_fingerprint
from lipsync_cli.media.formats import PRESETS, EncodeOptions
from lipsync_cli.media.spool import LOOP_MODES, loop_index, output_frames
from lipsync_cli.render import _EngineRun, engine_batch_frames, prepare_for_inference
from lipsync_cli.segments import active_frames, has_segments, segment_audio, speech_track
from lipsync_cli.silence import SILENCE_DEFAULT, SILENCE_FADE, SILENCE_MODES
from lipsync_cli.vad import MIN_PAUSE, VAD_METHODS

if TYPE_CHECKING:
    from lipsync_cli.speakers import SpeakerSetup

log = logging.getLogger(__name__)

DETECTORS = ("s3fd", "insightface")
OUTPUT_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v")

# Progress callback: (stage, frames advanced, stage total or None).
ProgressFn = Callable[[str, int, "int | None"], None]
# what dub() does before its face pass and first frame, each timed in DubResult.startup (seconds), with "total"
STARTUP_PHASES = ("probe", "audio", "imports", "model", "detector", "vad")


@dataclass(frozen=True)
class DubOptions:
    """Everything ``dub`` needs besides its three paths; the CLI's defaults come from here."""

    checkpoint: Path | None = None  # generator weights; None -> the registry default (wav2lip_gan)
    arch: str | None = None  # None -> from the checkpoint; "musetalk": MuseTalk 1.5 (lipsync_cli.musetalk_dub)
    bbox_shift: int = 0  # MuseTalk's crop: moves its top by 2x this (px, + down); 0 as upstream v1.5
    detector: str = DEFAULT_DETECTOR  # prepare's too
    detector_weights: Path | None = None  # None -> the registry default (s3fd) / insightface pack
    det_size: int | None = None  # longest side of the frames given to the detector, px; None: 640 GPU, 320 CPU
    detect_every: int = 4  # detect every Nth frame, interpolate between when the same faces are at both ends
    cut_threshold: float | None = CUT_THRESHOLD  # PySceneDetect content score of a shot cut; None: no cuts
    box: tuple[int, int, int, int] | None = None  # fixed face box X1 Y1 X2 Y2: skips detection
    track: Path | None = None  # reuse boxes from `lipsync detect`
    track_options: TrackOptions = field(default_factory=TrackOptions)
    strict: bool = False  # frames without a face are an error instead of passing through
    batch_size: int | None = None  # generator batch; None -> 16 on CPU, 128 on GPU
    device: str = "auto"
    precision: str = "auto"
    blend: str = "feather"
    loop: str = "pingpong"
    fps: float = DEFAULT_FPS  # frame rate of a video made from a still image
    crf: int = 18
    preset: str = "veryfast"
    max_pending_bytes: int = 384 << 20  # full frames held between decode and encode: caps the batch at 1080p
    offline: bool | None = None  # None -> LIPSYNC_OFFLINE
    encode: EncodeOptions = field(default_factory=EncodeOptions)  # codecs, pixel format, kept streams
    # who is dubbed with what (identity, one audio per speaker, auto): plain data, see lipsync_cli.speakers
    speakers: SpeakerSetup | None = None
    enhance: bool = False  # restore the dubbed mouth with a face restorer (lipsync_cli/enhance)
    enhancer_weights: Path | None = None  # GFPGANv1.4-format .pth or an ONNX restorer; None -> registry gfpgan_v14
    enhance_strength: float = 1.0  # 0..1: blend weight of the restored mouth
    enhance_noise: str = "fixed"  # GFPGAN's noise: fixed (stored buffers, no flicker) | random (as GFPGANer)
    # --- like a dubbing studio: pauses (lipsync_cli.silence, .vad), only some lines (.segments, .timeline) ---
    silence: str = SILENCE_DEFAULT  # the mouth in the speech's pauses: hold (closed, still) | model | source
    silence_fade: int = SILENCE_FADE  # frames of cross-fade at each edge of a pause or a segment
    vad: str = "silero"  # speech activity: silero (the packaged network) | energy
    min_pause: float = MIN_PAUSE  # seconds: shorter pauses stay speech (a breath)
    segments: Path | None = None  # the lines to dub: CSV/JSON, SRT/ASS/VTT subtitles, or an .otio/.edl timeline
    start: str | None = None  # one line from here (seconds or HH:MM:SS[:FF|.mmm]) ...
    end: str | None = None  # ... to here; the rest of the video is the source's
    me: Path | None = None  # music-and-effects stem under the lines (with segments)
    timeline_out: Path | None = None  # write what was dubbed as .otio (or .edl) for the editor

    def validate(self, output: str | Path | None = None) -> None:
        """One place for every cross-option rule; with ``output``, also what the encoder and its container take
        (``EncodeOptions.validate``)."""
        if self.device not in DEVICES:
            raise BadOption(f"--device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise BadOption(f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.blend not in blending.BLEND_MODES:
            raise BadOption(f"--blend {self.blend!r} is not one of {', '.join(blending.BLEND_MODES)}")
        if self.loop not in LOOP_MODES:
            raise BadOption(f"--loop {self.loop!r} is not one of {', '.join(LOOP_MODES)}")
        if self.detector not in DETECTORS:
            raise BadOption(f"--detector {self.detector!r} is not one of {', '.join(DETECTORS)}")
        if self.arch == "musetalk" and self.checkpoint is not None:
            raise BadOption("--checkpoint is a Wav2Lip-family file; MuseTalk's seven files come from the weights "
                            "registry", "drop --checkpoint (get them with: lipsync weights download musetalk)")
        if self.bbox_shift and self.arch != "musetalk":
            raise BadOption(f"--bbox-shift {self.bbox_shift} moves MuseTalk's crop", "add --arch musetalk")
        if self.max_pending_bytes < 1:
            raise BadOption(f"max_pending_bytes must be > 0, got {self.max_pending_bytes}")
        if self.batch_size is not None and self.batch_size < 1:
            raise BadOption(f"--batch-size must be at least 1, got {self.batch_size}")
        if not (0 < self.fps <= 240):
            raise BadOption(f"--fps must be in (0, 240], got {self.fps}")
        if not (0 <= self.crf <= 51):
            raise BadOption(f"--crf must be in 0..51, got {self.crf}")
        if self.preset not in PRESETS:
            raise BadOption(f"--preset {self.preset!r} is not one of {', '.join(PRESETS)}")
        if self.detect_every < 1:
            raise BadOption(f"--detect-every must be at least 1, got {self.detect_every}")
        if self.cut_threshold is not None and not self.cut_threshold > 0:
            raise BadOption(f"--cut-threshold must be > 0, got {self.cut_threshold}")
        if self.det_size is not None and self.det_size < 64:
            raise BadOption(f"--det-size must be at least 64 px, got {self.det_size}")
        if self.speakers is not None:
            self.speakers.validate()
            if self.box is not None:
                raise BadOption("--box gives one fixed face: it cannot be combined with speakers or --ref-face")
        if not (0.0 <= self.enhance_strength <= 1.0):
            raise BadOption(f"--enhance-strength must be in 0..1, got {self.enhance_strength}")
        if self.enhance_noise not in ENHANCE_NOISE:
            raise BadOption(f"--enhance-noise {self.enhance_noise!r} is not one of {', '.join(ENHANCE_NOISE)}")
        if self.enhancer_weights is not None and not self.enhance:
            raise BadOption("--enhancer-weights is given without --enhance", "add --enhance")
        if self.silence not in SILENCE_MODES:
            raise BadOption(f"--silence {self.silence!r} is not one of {', '.join(SILENCE_MODES)}")
        if self.silence_fade < 0:
            raise BadOption(f"--silence-fade must be >= 0 frames, got {self.silence_fade}")
        if self.vad not in VAD_METHODS:
            raise BadOption(f"--vad {self.vad!r} is not one of {', '.join(VAD_METHODS)}")
        if self.min_pause < 0:
            raise BadOption(f"--min-pause must be >= 0 seconds, got {self.min_pause}")
        from lipsync_cli.segments import validate_segment_options

        validate_segment_options(self)
        if self.box is not None and self.track is not None:
            raise BadOption("--box and --track both give the face position: use one")
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            if x2 <= x1 or y2 <= y1 or min(self.box) < 0:
                raise BadOption(f"--box {x1} {y1} {x2} {y2} is empty or negative",
                                "give X1 Y1 X2 Y2 with X2 > X1, Y2 > Y1")
        if output is not None:
            self.encode.validate(output)


@dataclass
class DubResult:
    output: Path
    frames: int  # frames written
    fps: float
    faces: int  # faces redrawn (one per frame, or one per speaker on screen)
    no_face_frames: list[int]  # output frames passed through without a face
    audio_seconds: float
    wall_seconds: float
    stage_seconds: dict[str, float]  # busy time of each stage
    stage_frames: dict[str, int]
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 0  # the generator batch at the end of the run (smaller than asked after out-of-memory)
    decoded_frames: int = 0  # frames decoded from the source (looping costs at most one per output frame)
    encoding: str = ""  # what was written: 'libx265 yuv420p10le (10-bit) in mov'
    # the engine (lipsync_cli.engine): how full each queue between two stages was, {name: {capacity, mean, max,
    # unit}}; the peak bytes of frames in flight and their budget; the seconds of the streaming part of the run
    queue_stats: dict[str, dict] = field(default_factory=dict)
    pending_bytes: tuple[int, int] = (0, 0)
    stream_seconds: float = 0.0
    # seconds of start-up per STARTUP_PHASES, and "total": from the call until the face pass (stage "detect") and
    # the frames begin; what it does not count is the interpreter and the imports before dub() was called
    startup: dict[str, float] = field(default_factory=dict)
    # of no_face_frames, those where the video has faces but not the one(s) dubbed: {output frame: faces there}
    others_on_screen: dict[int, int] = field(default_factory=dict)
    # what others_on_screen frames lack: 'the dubbed person (alice.jpg) is not on screen'
    dubbed_absent: str = "the dubbed face is not on screen"
    looped: str = ""  # how the video was stretched to the audio ('' when it was not): see loop_note
    pauses: list[tuple[int, int]] = field(default_factory=list)  # [start, end) output frames of the pauses (voice 0)
    cpu: CpuUse | None = None  # CPU seconds of the streaming part: per stage, torch's workers, ffmpeg, cores

    @property
    def realtime_factor(self) -> float:
        """Seconds of output video produced per second of wall time."""
        return self.frames / self.fps / self.wall_seconds if self.wall_seconds > 0 else float("inf")

    def stage_fps(self) -> dict[str, float]:
        return {k: (self.stage_frames.get(k, 0) / s if s > 0 else float("inf")) for k, s in self.stage_seconds.items()}

    def no_face_lines(self) -> list[str]:
        """What happened to the frames that passed through: those without any face, and those whose faces are
        not the dubbed person's, each with its frames ('frames 10-24, 80: ...')."""
        absent = [i for i in self.no_face_frames if i not in self.others_on_screen]
        others = [i for i in self.no_face_frames if i in self.others_on_screen]
        lines = []
        if absent:
            lines.append(f"{_frames_phrase(absent)}: no face found; passed through unchanged")
        if others:
            counts = sorted({self.others_on_screen[i] for i in others})
            n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
            lines.append(f"{_frames_phrase(others)}: {self.dubbed_absent} ({n} other "
                         f"face{'' if counts[-1] == 1 else 's'}); passed through unchanged")
        return lines

    def summary_lines(self) -> list[str]:
        """The closing summary of ``lipsync dub``: the frames that passed through, what was written (frames,
        faces, encoding as the file has it, looping), and the speed (end to end and per stage, frames/s)."""
        from lipsync_cli.engine import format_rate

        stages = "  ".join(f"{k} {format_rate(self.stage_frames[k], s)}" for k, s in self.stage_seconds.items()
                           if self.stage_frames.get(k))
        wall = max(self.wall_seconds, 1e-9)
        return [
            *self.no_face_lines(),
            f"wrote {self.output}: {self.frames} frames at {self.fps:g} fps ({self.frames / self.fps:.2f} s), "
            f"{self.faces} faces redrawn; {self.encoding}" + (f"; {self.looped}" if self.looped else ""),
            f"{self.device}/{self.precision} batch {self.batch_size}: {self.wall_seconds:.1f} s, "
            f"{format_rate(self.frames, wall)} frames/s end to end, {self.realtime_factor:.2f}x real time; "
            f"stage frames/s: {stages}",
        ]

    def stats_lines(self) -> list[str]:
        """The summary of ``lipsync dub --stats``: per-stage busy time, queue occupancy, frames in flight."""
        from lipsync_cli.engine import format_cpu, format_stats

        lines = format_stats(self.stage_seconds, self.stage_frames, self.stream_seconds, self.queue_stats,
                             self.pending_bytes)
        return lines + (format_cpu(self.cpu, self.stage_frames, self.frames) if self.cpu is not None else [])


# ---------------------------------------------------------------------------------------------------------------
# the pipeline


@contextmanager
def _timed(into: dict[str, float], key: str):
    """Add the seconds the block takes to ``into[key]``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - t


def _check_paths(video: Path, audio: Path | None, out: Path) -> None:
    for p, what in ((video, "video"), (audio, "audio")):
        if p is None:  # per-speaker audio instead (checked by DubOptions.validate)
            continue
        if not p.exists():
            raise InputNotFound(f"{what} file not found: {p}")
        if not p.is_file():
            raise InputNotFound(f"{what} path is not a file: {p}")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise BadOption(f"output {out} must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    if out.resolve() in (video.resolve(), audio.resolve() if audio is not None else None):
        raise BadOption(f"output {out} is also an input", "write the result to a new file")
    if not out.parent.exists():
        raise BadOption(f"output folder {out.parent} does not exist", "create it first or choose another -o")


def _frame_ranges(idx: list[int]) -> str:
    """'3-7, 12, 40-41' for a sorted list of frame indices (at most 10 ranges shown)."""
    parts: list[str] = []
    start = prev = None
    for i in idx + [None]:
        if start is None:
            start = prev = i
        elif i is not None and i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    shown = ", ".join(parts[:10])
    return shown + (f" and {len(parts) - 10} more ranges" if len(parts) > 10 else "")


def _frames_phrase(idx: list[int]) -> str:
    """'frame 7' / 'frames 3-7, 12 (6 frames)' for sorted output frame indices."""
    if len(idx) == 1:
        return f"frame {idx[0]}"
    return f"frames {_frame_ranges(idx)} ({len(idx)} frames)"


def loop_note(is_image: bool, n_source: int, n_out: int, mode: str) -> str:
    """How ``n_out`` output frames came from a source of ``n_source`` frames: '' when each was used once."""
    if is_image:
        return f"the still image held for {n_out} frames"
    if n_source <= 0 or n_source >= n_out:
        return ""
    return f"the {n_source}-frame video looped {mode} to the audio's {n_out} frames"


def _others_on_screen(no_face: list[int], track: Track | None, n_src: int, is_image: bool, loop: str,
                      min_score: float) -> dict[int, int]:
    """For each output frame of ``no_face`` whose source frame has detections (at least ``min_score``), their
    number: faces were there, just not the dubbed one."""
    if track is None or not len(track):
        return {}
    out = {}
    for i in no_face:
        j = 0 if is_image else min(loop_index(i, n_src, loop), len(track) - 1)
        dets = track.faces[j]
        n = int((np.asarray(dets)[:, 4] >= min_score).sum()) if len(dets) else 0
        if n:
            out[i] = n
    return out


def _dubbed_absent(options: DubOptions) -> str:
    """How the summary says that frames lack whoever ``options`` dub: 'the dubbed person (alice.jpg) is not on
    screen'."""
    if options.speakers is None:
        return "the dubbed face is not on screen"
    if options.speakers.auto:
        return "the speaking face is not on screen"
    names = [spec.label for spec in options.speakers.speakers]
    if len(names) == 1:
        return f"the dubbed person ({names[0]}) is not on screen"
    return f"none of the dubbed people ({', '.join(names)}) is on screen"


def detection_size(options: DubOptions, device: str) -> int:
    """``options.det_size``, or by default 640 px on a GPU and 320 px on a CPU (``default_det_size``, as
    ``lipsync prepare``)."""
    from lipsync_cli.faces.detect import default_det_size

    return options.det_size or default_det_size(device)


def _resolve_weights(name: str, options: DubOptions, progress: ProgressFn | None, notify) -> Path:
    """A registry file: found locally, or downloaded (with a bytes progress stage) unless offline."""
    from lipsync_cli import weights

    seen = [0]

    def on_bytes(done: int, total: int | None) -> None:
        if progress is not None:
            progress(f"download {name}", done - seen[0], total)
        seen[0] = done

    return weights.resolve(name, None, offline=options.offline, progress=on_bytes, notify=notify)


def load_dub_generator(options: DubOptions, device: str, notify: Callable[[str], None] | None = None,
                       progress: ProgressFn | None = None):
    """The generator named by ``options`` (the registry default when no checkpoint is given), eval mode."""
    from lipsync_cli.checkpoint import load_generator

    if options.arch == "musetalk":  # not a checkpoint: seven registry files (lipsync_cli.musetalk_dub)
        from lipsync_cli.musetalk_dub import load_dub_musetalk

        return load_dub_musetalk(options, device, notify, progress)
    ckpt = options.checkpoint or _resolve_weights("wav2lip_gan", options, progress, notify)
    return load_generator(ckpt, arch=options.arch, device=device)


def load_dub_detector(options: DubOptions, device: str, notify: Callable[[str], None] | None = None,
                      progress: ProgressFn | None = None):
    from lipsync_cli.faces import load_detector

    wts = options.detector_weights
    if wts is None and options.detector == "s3fd":
        wts = _resolve_weights("s3fd", options, progress, notify)
    return load_detector(options.detector, weights=wts, device=device, det_size=detection_size(options, device))


def load_dub_enhancer(options: DubOptions, device: str, precision: str, notify: Callable[[str], None] | None = None,
                      progress: ProgressFn | None = None):
    """The face restorer of ``--enhance``: ``options.enhancer_weights`` or the registry's GFPGAN v1.4."""
    from lipsync_cli.enhance import ENHANCE_BATCH_CPU, ENHANCE_BATCH_GPU, load_restorer

    path = options.enhancer_weights or _resolve_weights("gfpgan_v14", options, progress, notify)
    batch = ENHANCE_BATCH_CPU if device == "cpu" else ENHANCE_BATCH_GPU
    return load_restorer(path, device, precision, noise=options.enhance_noise, batch=batch)


def enhance_points(options: DubOptions, device: str):
    """The facial points of ``--enhance``: SCRFD's keypoints with ``--detector insightface`` (boxes found by it),
    else None (placed in the face box; S3FD gives no keypoints)."""
    if options.detector != "insightface" or options.box is not None:
        return None
    from lipsync_cli.enhance.landmarks import ScrfdPoints
    from lipsync_cli.faces.scrfd import SCRFDDetector, resolve_weights

    return ScrfdPoints(SCRFDDetector(resolve_weights(options.detector_weights), device, det_size=192))


def _dub_segments(video: Path, audio: Path | None, info, options: DubOptions):
    """(checked segments, output frames: the video's own length) of ``options``; raises before any work."""
    from lipsync_cli.segments import segments_for

    if info.is_image or not info.n_frames:
        raise BadOption(f"--segments and --start/--end dub lines of a video; {video} is a still image",
                        "dub the whole image without them")
    if options.speakers is not None:
        raise BadOption("segments with --speaker/--ref-face/--speakers are not supported yet",
                        "dub each speaker's lines in their own run, with --ref-box (or --box) for their face")
    fps = float(info.fps)
    return segments_for(options, info.n_frames / fps, fps, audio), int(info.n_frames)


def silent_mel_window() -> np.ndarray:
    """(80, 16) float32: the mel window of digital silence, what drives the held mouth of ``--silence hold``."""
    from lipsync_cli.audio import MIN_AUDIO_SAMPLES

    return np.ascontiguousarray(melspectrogram(np.zeros(MIN_AUDIO_SAMPLES, np.float32))[:, :MEL_WINDOW],
                                dtype=np.float32)


def plan_silence(speech_wavs, n_out: int, fps: float, options: DubOptions, active: np.ndarray | None = None):
    """(MouthPlan or None, pauses of voice 0): the speech activity of each voice's 16 kHz track (``lipsync_cli.vad``)
    turned into per-frame weights (``lipsync_cli.silence``). None, the speech-driven mouth everywhere as before,
    with ``--silence model`` and no segments (``active``: bool per output frame, inside a segment)."""
    from lipsync_cli.silence import plan_mouths
    from lipsync_cli.vad import VadOptions, speech_activity

    if options.silence == "model" and active is None:
        return None, []
    vad = VadOptions(method=options.vad, min_pause=options.min_pause)
    speech = None
    pauses: list[tuple[int, int]] = []
    if options.silence != "model":
        acts = [speech_activity(w, n_out, fps, vad) for w in speech_wavs]
        speech = [a.speech for a in acts]
        pauses = acts[0].pauses()
    plan = plan_mouths(speech, n_out, options.silence, options.silence_fade, active=active,
                       n_voices=len(speech_wavs))
    return plan, pauses


def dub_fps(info, options: DubOptions) -> float:
    """The frame rate a dub of the video probed as ``info`` runs at: the video's own, ``--fps`` for a still."""
    return float(options.fps) if info.is_image else float(info.fps)


def detect_track(video: Path, options: DubOptions, *, device: str = "cpu", progress: ProgressFn | None = None,
                 notify: Callable[[str], None] | None = None, info=None, detector=None) -> Track:
    """The detection pass of ``lipsync detect`` / ``lipsync dub``: every face of every frame (the analysis pass,
    ``lipsync_cli.analysis``, with detection alone).

    The network runs under the generator's autocast precision (bf16 halves S3FD's time on a CPU that has it);
    box decoding and NMS are float32 whatever the precision. ``detector``: one already loaded by
    ``load_dub_detector(options, device)`` (a batch worker keeps it for every video); ``info``: the video's
    probe, when the caller has it."""
    from dataclasses import replace

    from lipsync_cli.analysis import analyse
    from lipsync_cli.media.probe import probe

    info = info or probe(video)
    return analyse(video, info, replace(options, box=None, track=None, speakers=None), device=device,
                   detector=detector, progress=progress, notify=notify).track


@dataclass
class _DubPlan:
    """What is dubbed, by whom, with which audio: decided (and checked) before any model is loaded."""

    probe: object  # PendingProbe (or a probe already made): the video's one probe
    output: object  # EncodePlan: what the output file will be
    mels: list[np.ndarray]  # (80, T) per voice
    n_samples: int  # 16 kHz samples of the (longest) speech
    speech_wavs: list[np.ndarray]  # per voice, for the speech activity (dropped once it is known)
    voices: object = None  # speakers.Voices with per-speaker audio, else None (one AUDIO)
    segments: list | None = None  # the lines to dub (lipsync_cli.segments), None: all of it
    seg_frames: int = 0  # with segments: the output's frames (the video's own length)
    track: Track | None = None  # the faces given (a Track or a track file), checked against the video
    audio_info: object = None  # AudioInfo of AUDIO: its one probe


def _plan_dub(video: Path, audio: Path | None, out: Path, options: DubOptions, given, info, startup: dict) -> _DubPlan:
    """The plan of a dub: the video's probe (its header now, the packet scan in a thread), the output's encoding,
    the lines, the speech of each voice, the track given; every user mistake is raised here, before any load."""
    from lipsync_cli.media.formats import plan_output
    from lipsync_cli.media.probe import PendingProbe, probe_audio

    with _timed(startup, "probe"):  # the header now (its errors at once); the exact frame count in a thread
        pending = PendingProbe(video, info=info)
        audio_info = probe_audio(audio) if options.encode.acodec == "copy" and audio is not None else None
        output = plan_output(pending.header, options.encode, out, crf=options.crf, preset=options.preset,
                             audio=audio_info)
    plan = _DubPlan(pending, output, [], 0, [], audio_info=audio_info)
    if has_segments(options):  # the lines to dub, checked against the video before any work (lipsync_cli.segments)
        with _timed(startup, "probe"):
            info = pending.result()
        plan.segments, plan.seg_frames = _dub_segments(video, audio, info, options)
    with _timed(startup, "audio"):
        if plan.segments is not None:
            wav = speech_track(plan.segments, audio, int(round(plan.seg_frames / float(info.fps) * SAMPLE_RATE)),
                               SAMPLE_RATE)
            plan.mels, plan.n_samples, plan.speech_wavs = [melspectrogram(wav)], len(wav), [wav]
        elif options.speakers is None:
            if audio is None:
                raise BadOption("no audio given", "give AUDIO, or --speaker AUDIO --ref-face PHOTO for each person")
            plan.audio_info = plan.audio_info or probe_audio(audio)  # for the decode and the muxer: probed once
            wav = load_audio(audio, info=plan.audio_info)
            # only the mel is needed from here (and the speech activity): 19 MB less held per 5 minutes of audio
            plan.mels, plan.n_samples, plan.speech_wavs = [melspectrogram(wav)], len(wav), [wav]
        else:  # one mel per speaker's voice (see lipsync_cli.speakers)
            from lipsync_cli.speakers import load_voices

            if audio is not None and not options.speakers.has_own_audio:
                plan.audio_info = plan.audio_info or probe_audio(audio)
            voices = load_voices(audio, options.speakers, audio_info=plan.audio_info)
            plan.voices, plan.mels, plan.n_samples = voices, voices.mels, voices.n_samples
            plan.speech_wavs, voices.wavs = voices.wavs, []
    if given is not None and options.box is not None:
        raise BadOption("a box and a track both give the face position: use one")
    if given is not None:  # a track of another video is refused before any load
        with _timed(startup, "probe"):
            info = pending.result()
        plan.track = given if isinstance(given, Track) else Track.load(given)
        plan.track.check_matches(info.width, info.height, None if info.is_image else info.n_frames,
                                 video_fingerprint(video))
    return plan


def _load_engines(options: DubOptions, device: str, precision: str, model, restorer, detect: bool, say,
                  progress: ProgressFn | None, startup: dict):
    """(generator prepared for inference, enhancer or None, detector or None), each timed in ``startup``."""
    with _timed(startup, "model"):
        if model is None:
            model = load_dub_generator(options, device, notify=say, progress=progress)
        model = prepare_for_inference(model, device, precision)
        enhancer = None
        if options.enhance:
            from lipsync_cli.enhance import Enhancer

            restorer = restorer or load_dub_enhancer(options, device, precision, notify=say, progress=progress)
            enhancer = Enhancer(restorer, options.enhance_strength, points=enhance_points(options, device))
    detector = None
    if detect:
        with _timed(startup, "detector"):
            if options.detector == "insightface":  # a CUDA device without onnxruntime's CUDA: said here, once
                from lipsync_cli.faces.scrfd import providers_for

                providers_for(device, notify=say)
            detector = load_dub_detector(options, device, notify=say, progress=progress)
    return model, enhancer, detector


def _faces_of(video: Path, analysis, options: DubOptions, n_out: int, device: str, say, progress: ProgressFn | None
              ) -> Callable[[int], list[tuple[Box, int]]]:
    """Who is dubbed where, per source frame: [(box, voice), ...], from the analysis (or the fixed ``--box``);
    the warning when nobody dubbed is ever on screen; with ``--strict``, the error for frames without them."""
    info, track = analysis.info, analysis.track
    if options.box is not None:
        fixed = check_box(options.box, info.width, info.height)
        return lambda j: [(fixed, 0)]
    if options.speakers is not None:  # who, with which voice: lipsync_cli.speakers decides
        from lipsync_cli.speakers import plan_faces

        face_plan = plan_faces(video, track, options.speakers, options.track_options, detector=options.detector,
                               detector_weights=options.detector_weights, device=device, info=info,
                               offline=options.offline, notify=say, progress=progress,
                               references=analysis.references)
        boxes = [(fs[0][0] if (fs := face_plan.of(j)) else None) for j in range(len(track))]
        faces_of = face_plan.of
    else:
        boxes = face_boxes(track, options.track_options)

        def faces_of(j: int) -> list[tuple[Box, int]]:
            b = boxes[j] if j < len(boxes) else boxes[-1] if boxes else None
            return [(b, 0)] if b is not None else []
    if not any(b is not None for b in boxes):
        if options.strict:
            raise NoFaceError(f"no face found in any frame of {video}", "give the face position with --box")
        seen = any(len(d) for d in track.faces)  # faces there, but not the one(s) dubbed
        what = (_dubbed_absent(options) + " in any frame") if seen else "no face found"
        say(f"warning: {video}: {what}; the video passes through with the new audio")
    if options.strict:  # decided before any work is done: the boxes are known for every source frame
        n_src = len(boxes)
        used = sorted({loop_index(i, n_src, options.loop) if not info.is_image else 0 for i in range(n_out)})
        missing = [j for j in used if not faces_of(j)]
        if missing:
            raise NoFaceError(f"no face in {len(missing)} frame(s) of {video}: {_frame_ranges(missing)}",
                              "drop --strict to pass those frames through unchanged, or give --box")
    return faces_of


def dub(video: str | Path, audio: str | Path | None, out: str | Path, options: DubOptions = DubOptions(), *,
        progress: ProgressFn | None = None, notify: Callable[[str], None] | None = None,
        track: Track | str | Path | None = None, model=None,
        frame_sink: Callable[[int, np.ndarray], None] | None = None, restorer=None, info=None) -> DubResult:
    """Dub ``video`` (a video or still image) with the speech in ``audio``; write ``out`` atomically.

    Three steps: the plan (what is dubbed, by whom, with which audio: ``_plan_dub``, every user mistake raised
    before any load), the analysis (``lipsync_cli.analysis``: faces, cuts, identity, speaking scores, in one
    decode of the video), the render (one more decode, streamed through the engine into the encoder).

    ``track``: the faces of ``video`` already found, a :class:`Track` (what ``detect(video)`` returns) or a track
    file (``lipsync detect -o``): no detection pass runs. It is checked against the video as ``options.track`` is,
    and replaces it. ``info``: the video's ``probe`` (a batch worker probes each video once for all its jobs).

    ``model`` (and ``restorer``, for ``--enhance``) bypass weight loading (tests, the benchmark protocol);
    ``frame_sink(i, frame)`` sees every
    output frame before encoding; ``notify`` receives one-line messages for the user (downloads, warnings).
    With ``options.speakers`` (:mod:`lipsync_cli.speakers`) the faces of each frame and the audio of each come
    from the speaker description; ``audio`` is then None when every speaker has their own.
    """
    from lipsync_cli.analysis import analyse
    from lipsync_cli.heap import tune_malloc

    t_start = time.perf_counter()
    startup = dict.fromkeys(STARTUP_PHASES, 0.0)
    tune_malloc()  # freed frames go back to the system: peak RSS does not creep with the video's length
    video, audio, out = Path(video), Path(audio) if audio is not None else None, Path(out)
    options.validate(out)
    _check_paths(video, audio, out)
    say = notify or (lambda msg: log.info(msg))

    # --- the plan: what is dubbed, by whom, with which audio ---
    plan = _plan_dub(video, audio, out, options, track if track is not None else options.track, info, startup)
    for note in plan.output.notes:
        say(note)
    with _timed(startup, "imports"):
        torch = import_torch()  # after the cheap checks, so user mistakes are reported at once

    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device)
    batch_size = options.batch_size or (16 if device == "cpu" else 128)
    model, enhancer, detector = _load_engines(options, device, precision, model, restorer,
                                              options.box is None and plan.track is None, say, progress, startup)
    with _timed(startup, "probe"):
        info = plan.probe.result()  # the packet scan ran while the audio and the weights loaded
    fps = dub_fps(info, options)
    n_out = n_output_frames(plan.n_samples, fps) if plan.segments is None else plan.seg_frames
    # the mel window of each output frame, with the audio/video lead the generator was trained with
    starts = mel_start(np.arange(n_out), fps, lead=getattr(model, "mel_lead", 0), n_mel=plan.mels[0].shape[1])
    with _timed(startup, "vad"):  # the mouth in pauses (and outside the segments): lipsync_cli.silence
        active = active_frames(plan.segments, n_out, fps) if plan.segments is not None else None
        mouth_plan, pauses = plan_silence(plan.speech_wavs, n_out, fps, options, active=active)
    if pauses == [(0, n_out)]:
        say(f"warning: the voice activity detector found no speech in {audio or 'the speech tracks'}: with "
            f"--silence {options.silence} the mouth stays {'closed' if options.silence == 'hold' else 'as it is'}"
            "; --silence model drives it with the audio anyway")
    adapter = None  # the Wav2Lip family's (lipsync_cli.generator_adapter), unless the generator is MuseTalk
    from lipsync_cli.musetalk_dub import is_musetalk

    if is_musetalk(model):
        from lipsync_cli.musetalk_dub import MuseTalkAdapter

        n_src = 1 if info.is_image else max(1, int(info.n_frames or n_out))
        with _timed(startup, "audio"):  # whisper windows of every voice, once
            adapter = MuseTalkAdapter.for_dub(
                model, plan.speech_wavs, fps, n_out,
                src_of=lambda i: 0 if info.is_image else loop_index(i, n_src, options.loop),
                reuse=info.is_image or n_out > n_src, bbox_shift=options.bbox_shift, silence=mouth_plan is not None)
    plan.speech_wavs = []
    startup["total"] = time.perf_counter() - t_start  # the fixed cost; the face pass is stage_seconds["detect"]

    # --- the analysis: one decode of the video for every analyser the options need ---
    stage_s = {"decode": 0.0, "detect": 0.0, "prepare": 0.0, "generate": 0.0, "blend": 0.0,
               **({"enhance": 0.0} if options.enhance else {}), "encode": 0.0}
    stage_n = {k: 0 for k in stage_s}
    t = time.perf_counter()
    analysis = analyse(video, info, options, device=device, track=plan.track, detector=detector,
                       progress=progress, notify=say)
    faces_of = _faces_of(video, analysis, options, n_out, device, say, progress)
    if options.box is None and (plan.track is None or options.speakers is not None):
        stage_s["detect"] = time.perf_counter() - t  # the face pass: detection, identity, speaking scores
    if options.box is None and plan.track is None:
        stage_n["detect"] = len(analysis.track)

    # --- the render: the streaming loop, threads joined by bounded queues (see _EngineRun, lipsync_cli.engine) ---
    height, width = (info.height, info.width)
    frame_bytes = height * width * 3 * (2 if plan.output.depth == 16 else 1)
    if enhancer is not None and plan.output.depth == 16:
        raise BadOption("--enhance restores 8-bit frames only, and this output keeps the source's 16-bit depth",
                        "add --pix-fmt yuv420p (8-bit output) or leave out --enhance")
    run = _EngineRun(
        model=model, device=device, precision=precision, gen={"batch": batch_size},
        mel_ts=[torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)) for m in plan.mels], starts=starts,
        blend_mode=options.blend, enhancer=enhancer, faces_of=faces_of, frame_bytes=frame_bytes,
        batch_frames=engine_batch_frames(batch_size, options.max_pending_bytes, frame_bytes),
        budget_bytes=options.max_pending_bytes, n_out=n_out, stage_s=stage_s, stage_n=stage_n,
        frame_sink=frame_sink, progress=progress, plan=mouth_plan,
        silent_mel=torch.from_numpy(silent_mel_window()) if mouth_plan is not None else None, adapter=adapter)
    decode_stats: dict = {}
    cpu = _render(run, video, audio, out, options, plan, info, fps, n_out, decode_stats)
    return _result(run, out, options, plan, analysis, info, fps, device, precision, decode_stats, pauses, startup,
                   t_start, cpu)


def _render(run: _EngineRun, video: Path, audio: Path | None, out: Path, options: DubOptions, plan: _DubPlan, info,
            fps: float, n_out: int, decode_stats: dict) -> CpuUse:
    """The render pass: the video decoded once more (looped to the audio), through the engine into the encoder,
    with the output's sound; then the timeline of what was dubbed (``--timeline-out``). Returns the CPU seconds
    the streaming part used (``--stats``)."""
    from contextlib import nullcontext

    from lipsync_cli.media.encode import VideoWriter
    from lipsync_cli.speakers import output_audio

    if plan.segments is not None:
        sound = segment_audio(plan.segments, audio, video, n_out / fps, options.me)
    else:
        sound = output_audio(plan.voices) if plan.voices is not None else nullcontext(audio)
    run.cpu_meter = meter = CpuMeter().start()
    with sound as mux, VideoWriter(out, info.width, info.height, fps, audio_path=mux, plan=plan.output,
                                   audio_info=plan.audio_info if audio is not None and mux == audio else None
                                   ) as writer:
        run.run(lambda: output_frames(video, info.is_image, fps, n_out, options.loop, info=info,
                                      stats=decode_stats, depth=plan.output.depth), writer)
    cpu = meter.stop(run.stage_cpu)
    if run.frames == 0:
        raise BadOption(f"{video} produced no frames")
    if options.timeline_out is not None:  # what was dubbed, for the editor (lipsync_cli.timeline)
        from lipsync_cli.segments import Segment
        from lipsync_cli.timeline import write_timeline

        lines = plan.segments if plan.segments is not None else [Segment(0.0, run.frames / fps)]
        write_timeline(Path(options.timeline_out), out, lines, audio, fps, run.frames / fps)
    return cpu


def _result(run: _EngineRun, out: Path, options: DubOptions, plan: _DubPlan, analysis, info, fps: float,
            device: str, precision: str, decode_stats: dict, pauses, startup: dict, t_start: float,
            cpu: CpuUse | None = None) -> DubResult:
    from lipsync_cli.media.formats import describe

    n_src = 1 if info.is_image else decode_stats.get("source_frames", run.frames)
    return DubResult(
        output=out, frames=run.frames, fps=fps, faces=run.n_faces, no_face_frames=run.no_face,
        audio_seconds=plan.n_samples / SAMPLE_RATE, wall_seconds=time.perf_counter() - t_start,
        stage_seconds=run.stage_s, stage_frames=run.stage_n, device=device, precision=precision,
        batch_size=run.gen["batch"], decoded_frames=decode_stats.get("decoded", 0), encoding=describe(plan.output),
        queue_stats=run.queue_stats, pending_bytes=(run.peak_bytes, options.max_pending_bytes),
        stream_seconds=run.wall, startup=startup,
        others_on_screen=_others_on_screen(run.no_face, analysis.track, n_src, info.is_image, options.loop,
                                           options.track_options.min_score),
        dubbed_absent=_dubbed_absent(options), looped=loop_note(info.is_image, n_src, run.frames, options.loop),
        pauses=pauses, cpu=cpu,
    )
