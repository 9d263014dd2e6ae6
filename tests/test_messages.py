"""What the CLI says: refusals of runs that would silently do the wrong thing, and summaries that say what happened
(issue 19). Each test reads the real `lipsync` CLI's stderr."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from synth import make_audio, make_image, make_video

BOX = ("40", "20", "120", "100")  # inside the 160x120 synthetic frames


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "LIPSYNC_OFFLINE": "1", **(env or {})}
    full_env.pop("LIPSYNC_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "lipsync_cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=600)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("msgmedia")
    return {
        "video": make_video(d / "clip.mp4", seconds=0.6, fps=25),
        "short": make_video(d / "short.mp4", seconds=0.2, fps=25),
        "speech": make_audio(d / "speech.wav", seconds=0.6),
        "jpg": make_image(d / "still.jpg"),
        "dir": d,
    }


def test_attn_wav2lip_with_an_official_wav2lip_file_is_refused(clips, fake_ckpt, tmp_path):
    """--arch attn_wav2lip on a Wav2Lip file would run 14 attention layers at their initial values: refused in
    one line that names them and the fine-tuning command; nothing is written."""
    out = tmp_path / "o.mp4"
    r = run_cli("dub", str(clips["video"]), str(clips["speech"]), "-o", str(out), "-c", str(fake_ckpt("wav2lip")),
                "--arch", "attn_wav2lip", "--box", *BOX)
    assert r.returncode == 5, r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "14 attention layers" in lines[0] and "untrained" in lines[0]
    assert "lipsync train generator --arch attn_wav2lip --init" in lines[0]
    assert not out.exists()


def test_weights_export_and_import_write_files_of_the_usual_mode(fake_ckpt, tmp_path):
    """Every output gets 0666 less the umask (0644 usually), .safetensors too (safetensors writes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for cmd, name in (("export", "w.safetensors"), ("export", "w.pt"), ("import", "i.safetensors")):
        out = tmp_path / name
        r = run_cli("weights", cmd, str(fake_ckpt("wav2lip")), str(out))
        assert r.returncode == 0, r.stderr
        assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~umask), (cmd, name)


@pytest.mark.parametrize("name", ["nosuch.onnx", "nosuch.pth"])
def test_missing_enhancer_weights_is_one_line_like_a_missing_checkpoint(clips, fake_ckpt, tmp_path, name):
    out = tmp_path / "o.mp4"
    common = ["dub", str(clips["video"]), str(clips["speech"]), "-o", str(out), "--box", *BOX]
    r = run_cli(*common, "-c", str(fake_ckpt("wav2lip")), "--enhance", "--enhancer-weights", str(tmp_path / name))
    lines = error_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0] == f"error: enhancer weights not found: {tmp_path / name} (give a GFPGANv1.4 .pth or an ONNX " \
                       "restorer, or leave out --enhancer-weights)"
    assert not out.exists()
    if name.endswith(".pth"):  # the same shape of message as --checkpoint's
        r = run_cli(*common, "-c", str(tmp_path / name))
        assert (r.returncode, error_lines(r.stderr)) == (2, [f"error: checkpoint not found: {tmp_path / name}"])
