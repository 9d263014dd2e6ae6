"""Speech activity of the new audio, one decision per video frame: where the speaker talks, where they pause.

The detector is Silero VAD (``silero-vad``: its wheel carries the network, nothing is downloaded), run on the
speech track (the dialogue stem) at 16 kHz in chunks of 512 samples (32 ms), each giving a speech probability.
Chunks quieter than an energy floor (``ENERGY_FLOOR_DB`` dBFS) are silence whatever the network says; without the
network (``method="energy"``, or silero-vad not importable) the decision is energy alone, against a floor relative
to the track's own loud parts.

Per video frame the probability is the highest of the chunks the frame overlaps, turned into speech / pause with
hysteresis (a frame starts speech at ``threshold``, speech ends below ``neg_threshold``); pauses shorter than
``min_pause`` seconds are speech (a breath does not close the mouth), and speech blips shorter than
``min_speech`` seconds (a click) are pause. Last, each pause's edges move to where the signal's level changes
(``sharpen_edges``): the network's recurrent state lags the audio by a few frames, the level does not.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from lipsync_cli.constants import SAMPLE_RATE
from lipsync_cli.errors import BadOption

log = logging.getLogger(__name__)

VAD_CHUNK = 512  # samples per Silero VAD decision at 16 kHz (32 ms)
VAD_METHODS = ("silero", "energy")
ENERGY_FLOOR_DB = -60.0  # dBFS (RMS of a chunk): quieter is silence, whatever the network says
ENERGY_RELATIVE_DB = -30.0  # energy-only: speech is louder than the track's 95th percentile chunk plus this
THRESHOLD = 0.5  # speech probability that starts speech
NEG_THRESHOLD = 0.35  # ... and below which speech ends (hysteresis)
MIN_PAUSE = 0.3  # seconds: shorter pauses (a breath, a stop consonant) stay speech
MIN_SPEECH = 0.1  # seconds: shorter speech inside a pause (a click) stays pause


@dataclass(frozen=True)
class VadOptions:
    method: str = "silero"
    threshold: float = THRESHOLD
    neg_threshold: float = NEG_THRESHOLD
    min_pause: float = MIN_PAUSE
    min_speech: float = MIN_SPEECH

    def validate(self) -> None:
        if self.method not in VAD_METHODS:
            raise BadOption(f"VAD method {self.method!r} is not one of {', '.join(VAD_METHODS)}")
        if not (0 < self.neg_threshold <= self.threshold < 1):
            raise BadOption(f"VAD thresholds must satisfy 0 < neg ({self.neg_threshold}) <= start "
                            f"({self.threshold}) < 1")
        if self.min_pause < 0 or self.min_speech < 0:
            raise BadOption("--min-pause and --min-speech must be >= 0 seconds")


@dataclass
class SpeechActivity:
    """Per video frame: True where the speaker talks. ``method``: what decided ('silero' or 'energy');
    ``seconds``: the detector's wall time."""

    speech: np.ndarray  # (n_frames,) bool
    fps: float
    method: str
    seconds: float = 0.0

    def pauses(self) -> list[tuple[int, int]]:
        """The pauses as [start, end) frame spans."""
        return spans(~self.speech)

    def speech_spans(self) -> list[tuple[int, int]]:
        return spans(self.speech)


def spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index spans of the runs of True in a 1-D bool array."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def chunk_rms_db(wav: np.ndarray) -> np.ndarray:
    """RMS of each VAD_CHUNK of ``wav`` (16 kHz mono float), dBFS (a full-scale sine is -3)."""
    n = -(-len(wav) // VAD_CHUNK)
    x = np.zeros(n * VAD_CHUNK, np.float32)
    x[:len(wav)] = wav
    rms = np.sqrt(np.mean(x.reshape(n, VAD_CHUNK).astype(np.float64) ** 2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


def silero_probabilities(wav: np.ndarray) -> np.ndarray:
    """Silero VAD's speech probability of each VAD_CHUNK of ``wav`` (16 kHz mono float32), on the CPU.

    The packaged ONNX network (what ``silero_vad.load_silero_vad(onnx=True)`` loads) run by onnxruntime: the
    same probabilities as its TorchScript twin to 1e-5, and 4x faster on a CPU. Importing silero_vad sets torch's
    thread count to 1, which is undone here: the generator runs after it in the same process."""
    import torch

    threads = torch.get_num_threads()
    try:
        from importlib.resources import files

        from silero_vad.utils_vad import OnnxWrapper

        model = OnnxWrapper(str(files("silero_vad.data") / "silero_vad.onnx"), force_onnx_cpu=True)
    finally:
        torch.set_num_threads(threads)
    n = -(-len(wav) // VAD_CHUNK)
    x = np.zeros(n * VAD_CHUNK, np.float32)
    x[:len(wav)] = wav
    probs = model.audio_forward(torch.from_numpy(x), SAMPLE_RATE)  # (1, n)
    return np.asarray(probs, np.float32).reshape(-1)[:n]


def frame_rms_db(wav: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """RMS of the samples of each video frame (frame i: [i/fps, (i+1)/fps) s), dBFS; -200 for digital silence."""
    out = np.full(n_frames, -200.0)
    for i in range(n_frames):
        a, b = int(round(i * SAMPLE_RATE / fps)), int(round((i + 1) * SAMPLE_RATE / fps))
        part = wav[a:b].astype(np.float64)
        if len(part):
            out[i] = 20 * np.log10(max(np.sqrt(np.mean(part ** 2)), 1e-10))
    return out


EDGE_JOIN_DB = 6.0  # a frame beside a pause within this of the pause's level joins it
EDGE_LEAVE_DB = 15.0  # a frame at a pause's end this much above the pause's level is speech (the onset)
EDGE_REACH = 0.3  # seconds an edge may move


def sharpen_edges(speech: np.ndarray, frame_db: np.ndarray, fps: float) -> np.ndarray:
    """Move each inner pause's edges to where the energy changes: the network's state lags the audio (its
    probability decays for ~0.1-0.2 s after the last word and rises late at the next), the signal's level does
    not. A pause starts at the first frame as quiet as its own median level, and ends before the first loud
    frame."""
    speech = speech.copy()
    reach = max(1, int(round(EDGE_REACH * fps)))
    for a, b in spans(~speech):
        level = max(float(np.median(frame_db[a:b])), -100.0)
        lo = a
        while lo > 0 and a - lo < reach and frame_db[lo - 1] < level + EDGE_JOIN_DB:
            lo -= 1
        hi = b
        while hi - 1 > lo and b - hi < reach and frame_db[hi - 1] > level + EDGE_LEAVE_DB:
            hi -= 1
        speech[lo:a] = False
        speech[hi:b] = True
    return speech


def chunk_probabilities(wav: np.ndarray, method: str = "silero") -> tuple[np.ndarray, str]:
    """(speech probability per VAD_CHUNK, the method used). The energy floor is applied to either."""
    db = chunk_rms_db(wav)
    if method == "silero":
        try:
            probs = silero_probabilities(wav)
        except ImportError as err:  # the wheel is a dependency: only a broken install gets here
            log.warning("silero-vad unavailable (%s): speech activity from energy alone", err)
            method = "energy"
    if method == "energy":
        loud = np.percentile(db, 95) if len(db) else 0.0
        probs = (db > max(ENERGY_FLOOR_DB, loud + ENERGY_RELATIVE_DB)).astype(np.float32)
    probs = np.where(db < ENERGY_FLOOR_DB, 0.0, probs).astype(np.float32)
    return probs, method


def frame_probabilities(chunk_probs: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """Per video frame (frame i spans [i/fps, (i+1)/fps) s), the highest probability of the chunks it overlaps."""
    out = np.zeros(n_frames, np.float32)
    if len(chunk_probs) == 0:
        return out
    per = VAD_CHUNK / SAMPLE_RATE
    for i in range(n_frames):
        a = int(i / fps / per)
        b = max(a + 1, int(np.ceil((i + 1) / fps / per)))
        part = chunk_probs[a:b]
        out[i] = part.max() if len(part) else 0.0
    return out


def decide(frame_probs: np.ndarray, fps: float, options: VadOptions = VadOptions()) -> np.ndarray:
    """Speech (True) / pause per frame from per-frame probabilities: hysteresis, then short pauses and short
    speech removed (pauses first: a breath inside a sentence is speech)."""
    speech = np.zeros(len(frame_probs), bool)
    on = False
    for i, p in enumerate(frame_probs):
        on = p >= options.threshold if not on else p >= options.neg_threshold
        speech[i] = on
    min_pause = int(round(options.min_pause * fps))
    for a, b in spans(~speech):
        if b - a < min_pause and a > 0 and b < len(speech):  # inner pauses only: the ends are real silence
            speech[a:b] = True
    min_speech = int(round(options.min_speech * fps))
    for a, b in spans(speech):
        if b - a < min_speech:
            speech[a:b] = False
    return speech


def speech_activity(wav: np.ndarray, n_frames: int, fps: float,
                    options: VadOptions = VadOptions()) -> SpeechActivity:
    """Speech / pause of each of ``n_frames`` video frames at ``fps`` for the 16 kHz mono track ``wav``."""
    options.validate()
    t = time.perf_counter()
    probs, method = chunk_probabilities(wav, options.method)
    speech = decide(frame_probabilities(probs, n_frames, fps), fps, options)
    speech = sharpen_edges(speech, frame_rms_db(wav, n_frames, fps), fps)
    return SpeechActivity(speech=speech, fps=fps, method=method, seconds=time.perf_counter() - t)


def format_spans(activity: SpeechActivity) -> list[str]:
    """One line per span: 'speech   0.000-  1.240 s  frames    0-  30' (end exclusive)."""
    lines = []
    fps = activity.fps
    marks = [(a, b, "speech") for a, b in activity.speech_spans()] + [(a, b, "pause") for a, b in activity.pauses()]
    for a, b, kind in sorted(marks):
        lines.append(f"{kind:<6} {a / fps:8.3f}-{b / fps:8.3f} s  frames {a:6d}-{b:6d}")
    return lines
