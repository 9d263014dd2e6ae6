"""The README's "Python API" example, run verbatim through ``from lipsync_cli import ...``: fake weights, a 0.4 s
synthetic clip, one job in the batch; the face detection pass runs once for the whole example."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

from synth import make_audio, make_video

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_example() -> str:
    """The first ```python block under the README's "## Python API" heading."""
    text = README.read_text()
    section = text[text.index("\n## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_detects_once(tmp_path, monkeypatch, fake_ckpt, capsys):
    import lipsync_cli
    from lipsync_cli.weights import get_spec

    track_module = importlib.import_module("lipsync_cli.faces.track")
    home = tmp_path / "home"
    home.mkdir()
    os.symlink(fake_ckpt("s3fd"), home / get_spec("s3fd").file)  # the default detector's weights, found offline
    monkeypatch.setenv("LIPSYNC_HOME", str(home))
    monkeypatch.setenv("LIPSYNC_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    make_video(tmp_path / "talk.mp4", seconds=0.4, fps=25)
    make_audio(tmp_path / "talk.fr.wav", seconds=0.4)
    make_audio(tmp_path / "talk.de.wav", seconds=0.2)
    os.symlink(fake_ckpt("wav2lip"), tmp_path / "wav2lip_gan.pth")
    (tmp_path / "jobs.csv").write_text("video,audio\ntalk.mp4,talk.de.wav\n")

    passes = []  # one entry per detection pass over a video (lipsync_cli.analysis -> faces.track.track_frames)
    track_frames = track_module.track_frames
    monkeypatch.setattr(track_module, "track_frames", lambda frames, detector, info, *a, **k:
                        passes.append(info.path) or track_frames(frames, detector, info, *a, **k))

    exec(compile(_readme_example(), "README.md", "exec"), {"__name__": "readme"})

    assert [Path(v).name for v in passes] == ["talk.mp4"]  # detect() only: dub(track=) and the batch reuse it
    printed = capsys.readouterr().out.splitlines()[-2:]  # (before them: what the fake-weight writer says)
    assert printed[0].split()[0] == "10" and printed[1] == "1 0"  # 0.4 s at 25 fps; one job done, none failed
    assert (tmp_path / "talk.fr.mp4").is_file() and len(list((tmp_path / "dubbed").glob("*.mp4"))) == 1
    assert lipsync_cli.__all__  # the names came from the package


def test_dub_track_argument_is_checked_like_track_option(tmp_path, fake_ckpt):
    """dub(track=) takes a Track or a track file; one of another video, or given with a box, is refused in one
    line before any weights load, and nothing is written."""
    import numpy as np
    import pytest

    from lipsync_cli import DubOptions, LipsyncError, Track, dub

    video, audio = make_video(tmp_path / "talk.mp4", seconds=0.4, fps=25), make_audio(tmp_path / "a.wav", 0.4)
    other = Track(320, 240, 25.0, [np.zeros((0, 5), np.float32)] * 10)  # the video is 160x120
    other.save(tmp_path / "other.json")
    opts = DubOptions(checkpoint=fake_ckpt("wav2lip"), device="cpu", offline=True)
    for track in (other, tmp_path / "other.json", str(tmp_path / "other.json")):
        with pytest.raises(LipsyncError, match="made for a 320x240 video, this one is 160x120"):
            dub(video, audio, tmp_path / "out.mp4", opts, track=track)
    with pytest.raises(LipsyncError, match="box and a track"):
        dub(video, audio, tmp_path / "out.mp4", DubOptions(box=(0, 0, 50, 50)), track=other)
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*"))
