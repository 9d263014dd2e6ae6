"""Outputs that cannot be written are errors (exit 3) naming the output and the cause, and leave nothing behind:
a full disk (/dev/full, ``ulimit -f``), a failed rename, an ffmpeg that exits 0 on a cut-off file."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synth import make_audio, make_video

from lipsync_cli.errors import WriteError
from lipsync_cli.media import encode as encode_mod
from lipsync_cli.media.encode import VideoWriter
from lipsync_cli.media.ffmpeg import find_ffmpeg

BOX = ("40", "20", "120", "100")
posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX resource limits and /bin/sh")


def _frames(n: int, w: int = 64, h: int = 48):
    rng = np.random.default_rng(0)
    for _ in range(n):
        yield rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noise: the file grows with every frame


def _write(out: Path, n: int = 25) -> None:
    with VideoWriter(out, 64, 48, 25, preset="ultrafast") as writer:
        for frame in _frames(n):
            writer.write(frame)


def _cutting_ffmpeg(tmp_path: Path) -> Path:
    """An ffmpeg that, like some builds on a full disk, exits 0 after an encode whose file is cut in half."""
    script = tmp_path / "ffmpeg-cut"
    script.write_text(f"""#!/bin/sh
"{find_ffmpeg()}" "$@" || exit $?
case " $* " in *" pipe:0 "*)
  for last; do :; done
  truncate -s $(( $(wc -c < "$last") / 2 )) "$last";;
esac
exit 0
""")
    script.chmod(0o755)
    return script


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_encoder_on_a_full_disk_is_a_write_error(tmp_path, monkeypatch):
    """ffmpeg writing to /dev/full gets ENOSPC from the kernel: WriteError naming the output and the cause."""
    out = tmp_path / "out.mp4"
    full = tmp_path / ".out.mp4.lipsync-full.tmp.mp4"
    full.symlink_to("/dev/full")  # the encoder's temporary file is the full device
    monkeypatch.setattr(encode_mod, "temp_path", lambda path, suffix=".tmp": full, raising=False)
    with pytest.raises(WriteError) as err:
        _write(out)
    assert str(err.value).startswith(f"could not write {out}: No space left on device")
    assert err.value.exit_code == 3 and "free some space" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no output, and the temporary name is gone


@pytest.mark.parametrize("code,cause", [(errno.EACCES, "Permission denied"), (errno.ENOSPC, "No space left")])
def test_failed_rename_is_a_write_error(tmp_path, monkeypatch, code, cause):
    out = tmp_path / "out.mp4"

    def refuse(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(WriteError) as err:
        _write(out, 3)
    assert str(err.value).startswith(f"could not write {out}: {cause}") and err.value.exit_code == 3
    assert list(tmp_path.iterdir()) == []


@posix_only
@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_ffmpeg_exiting_0_on_a_cut_file_is_a_write_error(tmp_path, monkeypatch, suffix):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    monkeypatch.setenv("LIPSYNC_FFMPEG", str(_cutting_ffmpeg(tmp_path)))
    out = out_dir / f"out{suffix}"
    with pytest.raises(WriteError) as err:
        _write(out)
    assert str(err.value).startswith(f"could not write {out}: ffmpeg reported success but it is cut off")
    assert list(out_dir.iterdir()) == []


def test_whole_files_pass_the_completeness_check(tmp_path):
    for suffix in (".mp4", ".mov", ".mkv"):
        out = tmp_path / f"ok{suffix}"
        _write(out, 5)
        assert encode_mod._incomplete(out, encode_mod.VIDEO_SUFFIX_MUXERS[suffix]) is None
    data = (tmp_path / "ok.mp4").read_bytes()
    moov = data.index(b"moov") - 4
    (tmp_path / "nomoov.mp4").write_bytes(data[:moov] + b"\0\0\0\x08free" + data[moov + 8:])  # rename the box
    assert "no moov box" in encode_mod._incomplete(tmp_path / "nomoov.mp4", "mp4")


# --------------------------------------------------------------------------------------------------------------
# through the real CLI
# --------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("writemedia")
    return {"video": make_video(d / "clip.mp4", seconds=0.4, fps=25), "speech": make_audio(d / "s.wav", seconds=0.2)}


def _cli(args: list[str], env: dict | None = None, fsize: int | None = None) -> subprocess.CompletedProcess:
    """``python -m lipsync_cli ARGS``; ``fsize``: a ``ulimit -f`` in bytes for it and its ffmpeg children."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    full_env = {**os.environ, "LIPSYNC_OFFLINE": "1", **(env or {})}
    full_env.pop("LIPSYNC_DEBUG", None)
    full_env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run([sys.executable, "-m", "lipsync_cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=600, preexec_fn=limit if fsize else None)


@posix_only
@pytest.mark.parametrize("how", ["ulimit -f", "ffmpeg exits 0"])
def test_cli_dub_that_cannot_write_exits_3_and_leaves_nothing(media, fake_ckpt, tmp_path, how):
    """The issue: `wrote OUT` and exit 0 over a cut-off mp4. Now exit 3, the output and the cause named."""
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    out = out_dir / "out.mp4"
    args = ["dub", str(media["video"]), str(media["speech"]), "-o", str(out), "--checkpoint",
            str(fake_ckpt("wav2lip")), "--box", *BOX, "--precision", "fp32", "--device", "cpu"]
    if how == "ulimit -f":
        r = _cli(args, fsize=4096)  # the video is bigger: ffmpeg is stopped by SIGXFSZ, as on a full disk
        cause = "File too large"
    else:
        r = _cli(args, env={"LIPSYNC_FFMPEG": str(_cutting_ffmpeg(tmp_path))})
        cause = "ffmpeg reported success but it is cut off"
    assert r.returncode == 3, r.stderr
    assert f"error: could not write {out}: {cause}" in r.stderr
    assert "wrote" not in r.stderr and "Traceback" not in r.stderr
    assert list(out_dir.iterdir()) == []


@posix_only
def test_cli_detect_that_cannot_write_its_track_exits_3(media, fake_ckpt, tmp_path):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    out = out_dir / "track.json"
    r = _cli(["detect", str(media["video"]), "-o", str(out), "--detector-weights", str(fake_ckpt("s3fd")),
              "--device", "cpu"], fsize=64)  # the track is a few hundred bytes
    assert r.returncode == 3, r.stderr
    assert f"error: could not write {out}: File too large" in r.stderr
    assert "wrote" not in r.stderr and "Traceback" not in r.stderr
    assert list(out_dir.iterdir()) == []
