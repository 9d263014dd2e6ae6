"""The dub pipeline, through the library and the real `lipsync` CLI, on synthetic media with fake weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from checks import assert_mouth_redrawn, run_cli
from synth import make_audio, make_image, make_video

from lipsync_cli.dub import DubOptions, dub
from lipsync_cli.faces.track import TrackOptions
from lipsync_cli.media.spool import loop_index, output_frames

BOX = (40, 20, 120, 100)  # inside the 160x120 synthetic frames



@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("dubmedia")
    return {
        "video": make_video(d / "clip.mp4", seconds=1.0, fps=25),
        "short_video": make_video(d / "short.mp4", seconds=0.4, fps=25),
        "silent_video": make_video(d / "noaudio.mp4", seconds=0.5, fps=25, audio=False),
        "speech": make_audio(d / "speech.wav", seconds=0.6),
        "long_speech": make_audio(d / "long.mp3", seconds=1.1, channels=1),
        "tiny_speech": make_audio(d / "tiny.wav", seconds=0.05),
        "image": make_image(d / "still.png"),
        "dir": d,
    }


def wav2lip_reference(frames: list[np.ndarray], mel: np.ndarray, fps: float, box, model) -> list[np.ndarray]:
    """Wav2Lip inference.py's per-frame algorithm (fixed box, whole batch), transcribed for comparison."""
    import cv2
    import torch

    mel_step = 80.0 / fps
    chunks, i = [], 0
    while True:
        start = int(i * mel_step)
        if start + 16 > mel.shape[1]:
            chunks.append(mel[:, -16:])
            break
        chunks.append(mel[:, start:start + 16])
        i += 1
    x1, y1, x2, y2 = box
    faces = np.stack([cv2.resize(frames[k % len(frames)][y1:y2, x1:x2], (96, 96)) for k in range(len(chunks))])
    masked = faces.copy()
    masked[:, 48:] = 0
    img = np.concatenate((masked, faces), axis=3) / 255.0
    mels = np.stack(chunks)[:, None]  # (B, 1, 80, 16)
    with torch.no_grad():
        pred = model(torch.FloatTensor(mels), torch.FloatTensor(np.transpose(img, (0, 3, 1, 2))))
    pred = pred.cpu().numpy().transpose(0, 2, 3, 1) * 255.0
    out = []
    for k, p in enumerate(pred):
        f = frames[k % len(frames)].copy()
        f[y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
        out.append(f)
    return out


def test_paste_box_reproduces_wav2lip_frames(media, fake_ckpt):
    from lipsync_cli.audio import load_audio, melspectrogram
    from lipsync_cli.checkpoint import load_generator
    from lipsync_cli.media.decode import FrameReader

    model = load_generator(fake_ckpt("wav2lip"))
    got: dict[int, np.ndarray] = {}
    out = media["dir"] / "paste.mp4"
    res = dub(media["video"], media["speech"], out,
              DubOptions(checkpoint=fake_ckpt("wav2lip"), box=BOX, blend="paste", precision="fp32", device="cpu",
                         batch_size=4, silence="model"),  # Wav2Lip's frames: the generator on every window
              frame_sink=lambda i, f: got.__setitem__(i, f.copy()))
    with FrameReader(media["video"]) as reader:
        frames = list(reader)
    ref = wav2lip_reference(frames, melspectrogram(load_audio(media["speech"])), 25.0, BOX, model)
    assert res.frames == len(got) == 15  # 0.6 s at 25 fps: as long as the audio
    assert len(ref) == 12  # Wav2Lip stops early; the frames it does make must be ours
    diff = np.stack([np.abs(got[i].astype(int) - ref[i].astype(int)) for i in range(len(ref))])
    assert diff.max() <= 1 and diff.mean() < 1e-3, (diff.max(), diff.mean())
    # and the mouth region did change (the test could fail)
    assert np.abs(got[3].astype(int) - frames[3].astype(int))[BOX[1]:BOX[3], BOX[0]:BOX[2]].mean() > 1


def test_cli_dub_writes_h264_aac_of_audio_length(media, fake_ckpt):
    from lipsync_cli.media.probe import probe

    out = media["dir"] / "cli.mp4"
    r = run_cli("dub", str(media["video"]), str(media["speech"]), "-o", str(out), "--checkpoint",
                str(fake_ckpt("wav2lip")), "--box", *map(str, BOX), "--batch-size", "8", "--stats")
    assert r.returncode == 0, r.stderr
    info = probe(out)
    assert info.codec == "h264" and info.has_audio
    assert (info.width, info.height) == (160, 120)
    assert abs(info.fps - 25) < 1e-6
    assert abs(info.n_frames - 0.6 * 25) <= 1  # as long as the audio, within one frame
    assert "frames/s" in r.stderr or r.stderr == ""
    # --stats: every stage's busy time, the one that limits the run, every queue
    for needle in ("  decode ", "  prepare ", "  generate ", "  blend ", "  encode ", "<- limits the run",
                   "decode>prepare", "out>encode", "MiB budget"):
        assert needle in r.stderr, (needle, r.stderr)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".cli")]  # no temp files left
    assert_mouth_redrawn(media["video"], out, BOX, n=15)  # the default feather blend: the mouth, nothing else


def test_still_image_becomes_video_of_audio_length(media, fake_ckpt):
    from lipsync_cli.media.probe import probe

    out = media["dir"] / "still.mp4"
    res = dub(media["image"], media["speech"], out,
              DubOptions(checkpoint=fake_ckpt("wav2lip"), box=BOX, fps=30, batch_size=8))
    info = probe(out)
    assert abs(info.fps - 30) < 1e-6
    assert abs(info.n_frames - 0.6 * 30) <= 1 and info.n_frames == res.frames


def test_no_face_frames_pass_through_and_strict(media, fake_ckpt, tmp_path):
    from lipsync_cli.errors import NoFaceError
    from lipsync_cli.faces.track import Track
    from lipsync_cli.media.decode import FrameReader

    faces = [np.array([[*BOX, 0.99]], np.float32) if i % 3 else np.zeros((0, 5), np.float32) for i in range(25)]
    track_path = tmp_path / "track.json"
    Track(160, 120, 25.0, faces).save(track_path)
    got: dict[int, np.ndarray] = {}
    opts = DubOptions(checkpoint=fake_ckpt("wav2lip"), track=track_path, batch_size=4,
                      track_options=TrackOptions(smooth=False, pads=(0, 0, 0, 0)))
    res = dub(media["video"], media["speech"], tmp_path / "o.mp4", opts,
              frame_sink=lambda i, f: got.__setitem__(i, f.copy()))
    with FrameReader(media["video"]) as reader:
        src = list(reader)
    assert res.no_face_frames == [i for i in range(res.frames) if i % 3 == 0]
    for i in range(res.frames):
        same = np.array_equal(got[i], src[i])
        assert same == (i % 3 == 0), i
    with pytest.raises(NoFaceError, match=r"frame\(s\) of .*: 0, 3, 6"):
        dub(media["video"], media["speech"], tmp_path / "strict.mp4",
            DubOptions(checkpoint=fake_ckpt("wav2lip"), track=track_path, strict=True,
                       track_options=opts.track_options))
    assert not (tmp_path / "strict.mp4").exists()


@pytest.mark.parametrize("mode", ["pingpong", "forward"])
def test_loop_order_when_audio_outlasts_video(media, mode):
    from lipsync_cli.media.decode import FrameReader

    with FrameReader(media["short_video"]) as reader:
        src = list(reader)
    n = len(src)
    got = list(output_frames(media["short_video"], False, 25.0, 3 * n + 2, mode))
    assert [s for s, _ in got] == [loop_index(i, n, mode) for i in range(3 * n + 2)]
    for s, f in got:
        assert np.array_equal(f, src[s])
    if mode == "pingpong":
        assert [s for s, _ in got][n:n + 3] == [n - 2, n - 3, n - 4]


def test_loop_dub_is_as_long_as_audio(media, fake_ckpt):
    from lipsync_cli.media.probe import probe

    out = media["dir"] / "looped.mp4"
    dub(media["short_video"], media["long_speech"], out,
        DubOptions(checkpoint=fake_ckpt("wav2lip"), box=BOX, batch_size=16))
    assert abs(probe(out).n_frames - 1.1 * 25) <= 1


# ---- user mistakes: one line, non-zero exit, no traceback, nothing written --------------------------------------

def _bad(media, fake_ckpt, tmp_path, case):
    v, a, out = str(media["video"]), str(media["speech"]), str(tmp_path / "out.mp4")
    ck = ["--checkpoint", str(fake_ckpt("wav2lip")), "--box", *map(str, BOX)]
    notvideo = tmp_path / "notes.txt"
    notvideo.write_text("hello")
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(Path(fake_ckpt("wav2lip")).read_bytes()[:100000])
    return {
        "missing video": (["dub", str(tmp_path / "nope.mp4"), a, "-o", out, *ck], 2, "nope.mp4"),
        "not a video": (["dub", str(notvideo), a, "-o", out, *ck], 3, "notes.txt"),
        "no audio stream": (["dub", v, str(media["silent_video"]), "-o", out, *ck], 3, "noaudio.mp4"),
        "too short audio": (["dub", v, str(media["tiny_speech"]), "-o", out, *ck], 3, "tiny.wav"),
        "box outside": (["dub", v, a, "-o", out, "--checkpoint", str(fake_ckpt("wav2lip")),
                         "--box", "0", "0", "500", "100"], 2, "outside"),
        "output is input": (["dub", v, a, "-o", v, *ck], 2, "also an input"),
        "bad blend": (["dub", v, a, "-o", out, *ck, "--blend", "smudge"], 2, "--blend"),
        "wrong kind": (["dub", v, a, "-o", out, "--checkpoint", str(fake_ckpt("s3fd")), "--box",
                        *map(str, BOX)], 5, "S3FD"),
        "corrupt checkpoint": (["dub", v, a, "-o", out, "--checkpoint", str(truncated), "--box",
                                *map(str, BOX)], 5, "trunc.pth"),
    }[case]


@pytest.mark.parametrize("case", ["missing video", "not a video", "no audio stream", "too short audio", "box outside",
                                  "output is input", "bad blend", "wrong kind", "corrupt checkpoint"])
def test_user_mistakes(media, fake_ckpt, tmp_path, case):
    args, code, needle = _bad(media, fake_ckpt, tmp_path, case)
    r = run_cli(*args)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert needle in r.stderr, r.stderr
    assert not (tmp_path / "out.mp4").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_missing_weights_offline_is_one_clear_message(media, tmp_path):
    out = tmp_path / "out.mp4"
    r = run_cli("dub", str(media["video"]), str(media["speech"]), "-o", str(out), "--offline",
                env={"LIPSYNC_HOME": str(tmp_path / "cache")})
    assert r.returncode == 5, r.stderr
    assert "lipsync weights download" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 3
    assert not out.exists()


def test_ctrl_c_leaves_no_output(media, fake_ckpt, tmp_path):
    """SIGINT while encoding: exit 130, no output file, no temporary file."""
    import signal
    import time

    out_dir = tmp_path / "o"
    out_dir.mkdir()
    out = out_dir / "out.mp4"
    env = {**os.environ, "LIPSYNC_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lipsync_cli", "dub", str(media["short_video"]),
                             str(media["long_speech"]), "-o", str(out), "--checkpoint", str(fake_ckpt("wav2lip")),
                             "--box", *map(str, BOX), "--batch-size", "1", "--precision", "fp32"],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and not any(out_dir.iterdir()) and proc.poll() is None:
        time.sleep(0.05)  # wait until the encoder's temporary file exists
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []
