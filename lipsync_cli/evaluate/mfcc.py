"""MFCC exactly as SyncNet's evaluation computes it: python_speech_features' ``mfcc(signal, 16000)`` defaults.

Written in numpy from the definition (pre-emphasis 0.97, 25 ms rectangular frames every 10 ms with the tail
zero-padded, 512-point power spectrum, 26 triangular mel filters on floor()ed FFT bins, log, orthonormal
DCT-II,
13 coefficients, sinusoidal lifter 22, coefficient 0 replaced by the log frame energy). The reference feeds
the
16-bit PCM sample values unscaled (scipy's wavfile.read gives int16), so callers pass int16-valued samples.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

MFCC_RATE = 100  # MFCC steps per second (10 ms hop)
WINLEN = 0.025  # s
WINSTEP = 1.0 / MFCC_RATE  # s
N_CEPS = 13
N_FILT = 26
N_FFT = 512
PREEMPH = 0.97
CEP_LIFTER = 22


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def hz_to_mel(hz):
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(
    n_filt: int = N_FILT,
    n_fft: int = N_FFT,
    sample_rate: int = 16000,
    low_hz: float = 0.0,
    high_hz: float | None = None,
) -> np.ndarray:
    """(n_filt, n_fft // 2 + 1) triangular filters whose corners are whole FFT bins (floor, as the
    reference)."""
    high_hz = high_hz or sample_rate / 2
    mels = np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), n_filt + 2)
    corners = np.floor((n_fft + 1) * mel_to_hz(mels) / sample_rate)  # (n_filt + 2,) float bin numbers
    bins = np.arange(n_fft // 2 + 1, dtype=np.float64)
    lo, mid, hi = corners[:-2, None], corners[1:-1, None], corners[2:, None]  # (n_filt, 1) each
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = np.where((bins >= lo) & (bins < mid), (bins - lo) / (mid - lo), 0.0)
        falling = np.where((bins >= mid) & (bins < hi), (hi - bins) / (hi - mid), 0.0)
    fb = rising + falling  # the ranges are disjoint, so a sum is an assignment
    fb.setflags(write=False)
    return fb


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II as an (n, n) matrix: X[k] = sum_i x[i] * M[k, i]."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * k * (2 * i + 1) / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    m.setflags(write=False)
    return m


def frame_signal(signal: np.ndarray, frame_len: int, frame_step: int) -> np.ndarray:
    """(n_frames, frame_len) frames; the last one zero-padded; one frame for signals not longer than a
    frame."""
    n = len(signal)
    n_frames = 1 if n <= frame_len else 1 + math.ceil((n - frame_len) / frame_step)
    padded = np.zeros((n_frames - 1) * frame_step + frame_len, dtype=np.float64)
    padded[:n] = signal
    starts = np.arange(n_frames) * frame_step
    return padded[starts[:, None] + np.arange(frame_len)[None, :]]


def mfcc(signal: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """(n_steps, 13) MFCC of a mono signal, one row per 10 ms step (python_speech_features' defaults).

    ``n_steps = 1 + ceil((len - 400) / 160)`` at 16 kHz. ``signal`` is used at its own scale (int16 PCM values
    for SyncNet).
    """
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("mfcc of an empty signal")
    emphasised = np.concatenate([x[:1], x[1:] - PREEMPH * x[:-1]])
    frames = frame_signal(
        emphasised, _round_half_up(WINLEN * sample_rate), _round_half_up(WINSTEP * sample_rate)
    )
    power = (1.0 / N_FFT) * np.square(np.abs(np.fft.rfft(frames, N_FFT)))  # (n_steps, 257)
    energy = power.sum(axis=1)
    eps = np.finfo(float).eps
    energy = np.where(energy == 0, eps, energy)
    feat = power @ mel_filterbank(N_FILT, N_FFT, sample_rate).T  # (n_steps, 26)
    feat = np.log(np.where(feat == 0, eps, feat))
    ceps = feat @ _dct_matrix(N_FILT)[:N_CEPS].T  # (n_steps, 13)
    ceps *= 1.0 + (CEP_LIFTER / 2.0) * np.sin(np.pi * np.arange(N_CEPS) / CEP_LIFTER)
    ceps[:, 0] = np.log(energy)
    return ceps
