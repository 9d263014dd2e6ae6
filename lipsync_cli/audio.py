"""Audio: load any sound track as 16 kHz mono, Wav2Lip's mel spectrogram, and the per-frame mel windows.

The mel spectrogram reproduces Rudrabha/Wav2Lip ``audio.melspectrogram`` (librosa 0.7 numerics) with numpy
alone: pre-emphasis, a centred STFT with reflect padding and a periodic Hann window, a Slaney mel basis,
decibels with a floor, and symmetric normalisation to [-MAX_ABS_VALUE, MAX_ABS_VALUE].

Time bases: audio samples at ``SAMPLE_RATE`` Hz; mel steps at ``MEL_FPS`` per second (one per ``HOP_LENGTH``
samples); video frames at ``fps``. A generator window is ``MEL_WINDOW`` mel steps (0.2 s).
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
from collections.abc import Iterator

import numpy as np

from lipsync_cli.constants import (
    FMAX,
    FMIN,
    HOP_LENGTH,
    MAX_ABS_VALUE,
    MEL_FPS,
    MEL_WINDOW,
    MIN_LEVEL_DB,
    N_FFT,
    N_MELS,
    PREEMPHASIS,
    REF_LEVEL_DB,
    SAMPLE_RATE,
    WIN_LENGTH,
)
from lipsync_cli.errors import AudioTooShort, BadOption, MediaError

MIN_AUDIO_SAMPLES = MEL_WINDOW * HOP_LENGTH  # 3200 samples = 0.2 s: one generator window of audio
N_FREQS = N_FFT // 2 + 1  # 401 STFT bins
STFT_BLOCK = 1024  # STFT frames computed at once (12.8 s of audio)


# --------------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------------

def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE, start: float = 0.0,
               duration: float | None = None, min_samples: int | None = None,
               channels: int | None = None, info=None) -> np.ndarray:
    """Decode the first audio stream of ``path`` to float32 mono at ``sr`` Hz (nominally in [-1, 1]) with ffmpeg.

    Works for wav of any rate/sample format/channel count, mp3, m4a/aac, and the audio track of a video.
    Channels are averaged (as librosa does in Wav2Lip). ``start``/``duration`` (seconds) select a part.
    ``min_samples`` (default: one
    generator window, 0.2 s at ``sr``) is the shortest result accepted. ``channels=N`` keeps N channels instead
    (ffmpeg's up/downmix), as an (n, N) array: for audio that is listened to, not analysed. ``info``: the file's
    ``probe_audio``, when the caller has it (each file is probed once).

    Raises ``InputNotFound``, ``VideoOpenError`` (not media), ``NoAudioStream`` (no audio track: name it),
    ``AudioTooShort`` (empty or shorter than ``min_samples``), ``MediaError`` (decode failed).
    """
    from lipsync_cli.media.ffmpeg import find_ffmpeg
    from lipsync_cli.media.probe import probe_audio

    if sr <= 0:
        raise BadOption(f"sample rate must be > 0, got {sr}")
    info = info or probe_audio(path)  # raises InputNotFound / VideoOpenError / NoAudioStream
    cmd = [find_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error"]
    if start > 0:
        cmd += ["-ss", f"{start:.6f}"]
    if duration is not None:
        cmd += ["-t", f"{duration:.6f}"]
    # ffmpeg's own downmix weighs stereo by 0.707 each; Wav2Lip (librosa) averages the channels: do that
    keep = channels is not None
    channels = channels if keep else (info.channels if info.channels and info.channels > 1 else 1)
    cmd += ["-i", str(info.path), "-map", f"0:{info.stream_index}", "-vn", "-sn", "-dn",
            "-ac", str(channels), "-ar", str(sr), "-f", "f32le", "-acodec", "pcm_f32le", "-"]
    wav, rc, err = _read_pcm(cmd, channels, average=not keep)
    if rc != 0:
        msg = err.decode(errors="replace").strip().splitlines()
        raise MediaError(f"ffmpeg could not decode the audio of {info.path}: {msg[-1] if msg else 'no message'}")
    need = MIN_AUDIO_SAMPLES * sr // SAMPLE_RATE if min_samples is None else min_samples
    if len(wav) == 0 or len(wav) < need:
        raise AudioTooShort(f"{info.path} has {len(wav) / sr:.3f} s of audio, need at least {need / sr:.3f} s",
                            hint="give a longer audio file")
    return wav


def _read_pcm(cmd: list[str], channels: int, block_bytes: int = 1 << 20,
              average: bool = True) -> tuple[np.ndarray, int, bytes]:
    """Run ffmpeg ``cmd`` writing f32le with ``channels`` channels to stdout; return (mono float32, exit code,
    stderr). Read in blocks and averaged as it comes, so memory is the mono result, not the whole raw stream.
    ``average=False``: the (n, channels) samples as they are."""
    import tempfile

    with tempfile.TemporaryFile() as err:
        from lipsync_cli.media.ffmpeg import start_child

        proc = start_child(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        frame = 4 * channels  # bytes per sample frame
        parts: list[np.ndarray] = []
        rest = b""
        try:
            while True:
                chunk = proc.stdout.read(block_bytes)
                if not chunk:
                    break
                data = rest + chunk
                usable = len(data) - len(data) % frame
                rest = data[usable:]
                block = np.frombuffer(data[:usable], np.float32)
                if not average:
                    block = block.reshape(-1, channels).copy()  # (n, channels)
                elif channels > 1:
                    block = block.reshape(-1, channels).mean(axis=1, dtype=np.float32)  # (n,)
                else:
                    block = block.copy()
                parts.append(block)
        finally:
            proc.stdout.close()
            rc = proc.wait()
        err.seek(0)
        empty = np.zeros(0 if average else (0, channels), np.float32)
        return (np.concatenate(parts) if parts else empty), rc, err.read()


# --------------------------------------------------------------------------------------------------------------
# mel spectrogram (Wav2Lip audio.py)
# --------------------------------------------------------------------------------------------------------------

def preemphasis(wav: np.ndarray, k: float = PREEMPHASIS) -> np.ndarray:
    """y[0] = x[0], y[n] = x[n] - k x[n-1] (scipy ``lfilter([1, -k], [1], x)``), in float64."""
    x = np.asarray(wav, dtype=np.float64)
    y = np.empty_like(x)
    if len(x):
        y[0] = x[0]
        y[1:] = x[1:] - k * x[:-1]
    return y


def stft_magnitude(y: np.ndarray) -> np.ndarray:
    """|STFT| of ``y``: (N_FREQS, 1 + len(y) // HOP_LENGTH) float64.

    librosa's defaults of the Wav2Lip era: centred frames (reflect padding of N_FFT // 2 each side), periodic
    Hann window of WIN_LENGTH, hop HOP_LENGTH.
    """
    y = np.asarray(y, dtype=np.float64)
    return np.concatenate([mag for _, mag in _stft_blocks(len(y), lambda idx: y[idx])], axis=1)


def _stft_blocks(n: int, signal_at) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first frame, |STFT| block (N_FREQS, frames)) of a signal of ``n`` samples, STFT_BLOCK frames at a
    time. ``signal_at(idx)`` gives the float64 samples at indices ``idx`` (0 <= idx < n): the reflect-padded
    signal is never built whole, so memory does not grow with the length of the audio."""
    pad = N_FFT // 2
    if n <= pad:
        raise AudioTooShort(f"{n} samples is too short for an STFT (need more than {pad})")
    n_frames = 1 + n // HOP_LENGTH  # = 1 + (n + 2 * pad - N_FFT) // HOP_LENGTH
    window = _hann(WIN_LENGTH)
    if WIN_LENGTH < N_FFT:  # centre the window inside the FFT frame, as librosa does
        left = (N_FFT - WIN_LENGTH) // 2
        window = np.pad(window, (left, N_FFT - WIN_LENGTH - left))
    for a in range(0, n_frames, STFT_BLOCK):
        b = min(a + STFT_BLOCK, n_frames)
        idx = np.arange(a * HOP_LENGTH, (b - 1) * HOP_LENGTH + N_FFT) - pad  # indices into the unpadded signal
        idx = np.abs(idx)  # reflect at the start: -i -> i
        over = idx > n - 1
        idx[over] = 2 * (n - 1) - idx[over]  # reflect at the end
        seg = signal_at(idx)
        frames = np.lib.stride_tricks.sliding_window_view(seg, N_FFT)[::HOP_LENGTH][: b - a]  # (frames, N_FFT)
        yield a, np.abs(np.fft.rfft(frames * window, n=N_FFT, axis=1)).T


def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (scipy ``get_window('hann', n, fftbins=True)``)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


# Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above
_SLANEY_F_SP = 200.0 / 3
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _SLANEY_F_SP
    high = hz >= _SLANEY_MIN_LOG_HZ
    mel[high] = _SLANEY_MIN_LOG_MEL + np.log(hz[high] / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = _SLANEY_F_SP * mel
    high = mel >= _SLANEY_MIN_LOG_MEL
    hz[high] = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOGSTEP * (mel[high] - _SLANEY_MIN_LOG_MEL))
    return hz


@functools.lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """Wav2Lip's mel filterbank (librosa ``filters.mel(sr, n_fft, n_mels, fmin, fmax)``: Slaney scale and
    area normalisation): (N_MELS, N_FREQS) float32, read-only."""
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FREQS)  # Hz
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(np.array([FMIN]))[0], _hz_to_mel(np.array([FMAX]))[0],
                                   N_MELS + 2))  # band edges, Hz
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((N_MELS, N_FREQS), dtype=np.float32)  # float32 like librosa 0.7
    for i in range(N_MELS):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:N_MELS + 2] - mel_f[:N_MELS])
    weights *= enorm[:, None]
    weights.flags.writeable = False
    return weights


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised log-mel spectrogram of 16 kHz mono audio: (N_MELS, 1 + len(wav) // HOP_LENGTH)
    float32 in [-MAX_ABS_VALUE, MAX_ABS_VALUE], one step per HOP_LENGTH samples (MEL_FPS per second).

    Computed in blocks: beyond the result, memory stays a few MB whatever the length of the audio."""
    x = np.asarray(wav)
    n = len(x)
    basis = mel_basis().astype(np.float64)

    def preemphasised(idx: np.ndarray) -> np.ndarray:  # preemphasis(x)[idx], the same float64 arithmetic
        cur = x[idx].astype(np.float64)
        prev = x[np.maximum(idx - 1, 0)].astype(np.float64)
        return np.where(idx == 0, cur, cur - PREEMPHASIS * prev)

    min_level = np.exp(MIN_LEVEL_DB / 20 * np.log(10))  # 1e-5
    out = np.empty((N_MELS, 1 + n // HOP_LENGTH), dtype=np.float32)
    for a, mag in _stft_blocks(n, preemphasised):  # mag (401, frames)
        db = 20 * np.log10(np.maximum(min_level, basis @ mag)) - REF_LEVEL_DB  # (80, frames)
        norm = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
        out[:, a:a + mag.shape[1]] = np.clip(norm, -MAX_ABS_VALUE, MAX_ABS_VALUE)
    return out


# --------------------------------------------------------------------------------------------------------------
# per-frame windows
# --------------------------------------------------------------------------------------------------------------

def n_mel_steps(n_samples: int) -> int:
    """Mel steps ``melspectrogram`` gives for ``n_samples`` samples (centred STFT: 1 + n // HOP_LENGTH)."""
    return 1 + n_samples // HOP_LENGTH


def mel_start(frames, fps: float, lead: int = 0, n_mel: int | None = None):
    """The one definition of "which mel window belongs to video frame i": its first mel step.

    Frame ``i`` at ``fps`` gets the ``MEL_WINDOW``-step window starting at ``int((i - lead) * (MEL_FPS / fps))``.
    ``lead`` (video frames) is a property of the generator: what it was trained with. 0 is Wav2Lip's inference
    indexing (the window starts at the frame, the float order of upstream's ``int(i * (80. / fps))``); our
    trainer uses 2 (the window is centred on the frame) and stores it in its checkpoints.

    ``frames``: an int or an integer array. Without ``n_mel`` the raw starts are returned (they may be negative
    or run past the audio; training rejects such samples). With ``n_mel`` (the mel length) they are clamped to
    ``[0, n_mel - MEL_WINDOW]``: frames before the lead get the first window, frames past the audio the last,
    exactly as Wav2Lip's inference loop ends. Returns an int for an int, else an int64 array.

    Raises ``AudioTooShort`` when ``n_mel < MEL_WINDOW``.
    """
    if not fps > 0:
        raise BadOption(f"fps must be > 0, got {fps}")
    mult = MEL_FPS / fps  # mel steps per video frame, the same float as upstream's 80./fps
    scalar = np.ndim(frames) == 0
    f = np.asarray(frames, dtype=np.int64) - int(lead)
    starts = (f.astype(np.float64) * mult).astype(np.int64)  # int() truncation, as upstream
    if n_mel is not None:
        last = int(n_mel) - MEL_WINDOW
        if last < 0:
            raise AudioTooShort(f"{n_mel} mel steps is shorter than one {MEL_WINDOW}-step window (0.2 s)")
        starts = np.clip(starts, 0, last)
    return int(starts) if scalar else starts


def wav2lip_n_frames(n_mel: int, fps: float) -> int:
    """Video frames Wav2Lip's inference makes from ``n_mel`` mel steps: every frame whose window fits, then the
    first one that would run past the end (it gets the last window)."""
    last = n_mel - MEL_WINDOW
    if last < 0:
        raise AudioTooShort(f"{n_mel} mel steps is shorter than one {MEL_WINDOW}-step window (0.2 s)")
    n = int(np.ceil((last + 1) / (MEL_FPS / fps))) + 2  # enough frames to pass the end, whatever the rounding
    raw = mel_start(np.arange(n), fps)
    return int(np.count_nonzero(raw <= last)) + 1


def n_output_frames(n_samples: int, fps: float) -> int:
    """Video frames a dub of ``n_samples`` audio samples (16 kHz) at ``fps`` writes: as long as the audio,
    ceil(seconds * fps), and never fewer than Wav2Lip makes (it stops up to ~5 frames early)."""
    return max(wav2lip_n_frames(n_mel_steps(n_samples), fps), math.ceil(n_samples * fps / SAMPLE_RATE - 1e-6))


def mel_windows(mel: np.ndarray, starts) -> np.ndarray:
    """Stack the windows starting at ``starts`` (from :func:`mel_start`): (len(starts), N_MELS, MEL_WINDOW)
    float32, a copy of ``mel`` (N_MELS, T)."""
    return np.stack([mel[:, s:s + MEL_WINDOW] for s in np.asarray(starts, dtype=np.int64)]).astype(
        np.float32, copy=False)
