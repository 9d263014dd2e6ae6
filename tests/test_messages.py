"""What the CLI says: refusals of runs that would silently do the wrong thing, and summaries that say what happened
(issue 19). Each test reads the real `lipsync` CLI's stderr."""

from __future__ import annotations

import os

import pytest
from checks import run_cli
from synth import make_audio, make_image, make_video

BOX = ("40", "20", "120", "100")  # inside the 160x120 synthetic frames



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
    for cmd, name in (("export", "w.safetensors"), ("import", "i.safetensors")):
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


def summary(stderr: str) -> dict[str, str]:
    """The summary lines of `lipsync dub` by their first word ('wrote', 'frames', 'cpu/fp32'...)."""
    return {line.split()[0]: line for line in stderr.splitlines() if line.strip()}


def stage_rates(stderr: str) -> dict[str, str]:
    words = stderr.split("stage frames/s:")[1].splitlines()[0].split()
    return dict(zip(words[::2], words[1::2]))


def test_frames_that_pass_through_say_whether_a_face_was_there(clips, fake_ckpt, tmp_path):
    """Frames where other faces are on screen but not the dubbed one are not 'no face': each kind is named with
    its frames. And a stage that did nothing (blend of no face) prints no rate made of timer noise."""
    import numpy as np

    from lipsync_cli.engine import MIN_TIMED_S
    from lipsync_cli.faces.track import Track

    big, small = [10, 10, 90, 100, 0.99], [110, 40, 150, 80, 0.99]
    layout = {**dict.fromkeys([*range(5), *range(10, 15)], [big, small]), **dict.fromkeys(range(5, 8), [small])}
    faces = [np.array(layout.get(i, np.zeros((0, 5))), np.float32).reshape(-1, 5) for i in range(15)]
    track = tmp_path / "track.json"
    Track(160, 120, 25.0, faces).save(track)
    r = run_cli("dub", str(clips["video"]), str(clips["speech"]), "-o", str(tmp_path / "o.mp4"),
                "-c", str(fake_ckpt("wav2lip")), "--track", str(track))
    assert r.returncode == 0, r.stderr
    assert "frames 8-9 (2 frames): no face found; passed through unchanged" in r.stderr, r.stderr
    assert "frames 5-7 (3 frames): the dubbed face is not on screen (1 other face); passed through unchanged" \
        in r.stderr, r.stderr
    assert "had no face" not in r.stderr

    # every face missing: blend has nothing to do in ~0 s; its rate is a bound, not 15 frames / 3 microseconds
    Track(160, 120, 25.0, [np.zeros((0, 5), np.float32)] * 15).save(track)
    r = run_cli("dub", str(clips["video"]), str(clips["speech"]), "-o", str(tmp_path / "none.mp4"),
                "-c", str(fake_ckpt("wav2lip")), "--track", str(track), "--stats")
    assert r.returncode == 0, r.stderr
    assert "frames 0-14 (15 frames): no face found" in r.stderr
    for name, rate in stage_rates(r.stderr).items():
        assert rate.startswith(">") or float(rate) <= 15 / MIN_TIMED_S, (name, rate)
    blend_row = [s for s in r.stderr.splitlines() if s.startswith("  blend ")][0]
    assert float(blend_row.split()[-2].lstrip(">")) <= 15 / MIN_TIMED_S, blend_row


def test_summary_names_the_files_pixel_format_and_the_looping(clips, fake_ckpt, tmp_path):
    """A JPEG still (full range) comes out as limited-range yuv420p, which is what the summary says; a
    full-range video stays full range and the summary says so; a still and a short video say how they were
    stretched to the audio."""
    import re

    from lipsync_cli.media.probe import probe

    def pix_fmt_said(stderr: str) -> str:
        return re.search(r"; libx264 (\S+) \((.*?)\) in mp4", summary(stderr)["wrote"]).group(1, 2)

    out = tmp_path / "still.mp4"
    r = run_cli("dub", str(clips["jpg"]), str(clips["speech"]), "-o", str(out), "-c", str(fake_ckpt("wav2lip")),
                "--box", *BOX)
    assert r.returncode == 0, r.stderr
    assert probe(out).pix_fmt == "yuv420p"
    assert pix_fmt_said(r.stderr) == ("yuv420p", "8-bit")
    assert "the still image held for 15 frames" in summary(r.stderr)["wrote"]

    full = make_video(tmp_path / "full.mp4", seconds=0.2, fps=25, pix_fmt="yuvj420p")
    out = tmp_path / "full_out.mp4"
    r = run_cli("dub", str(full), str(clips["speech"]), "-o", str(out), "-c", str(fake_ckpt("wav2lip")),
                "--box", *BOX, "--loop", "forward")
    assert r.returncode == 0, r.stderr
    assert probe(out).pix_fmt == "yuvj420p"  # how ffmpeg names full-range yuv420p
    assert pix_fmt_said(r.stderr) == ("yuv420p", "8-bit, full range")
    assert "the 5-frame video looped forward to the audio's 15 frames" in summary(r.stderr)["wrote"]


def test_pads_need_four_numbers(clips, tmp_path):
    r = run_cli("dub", str(clips["video"]), str(clips["speech"]), "-o", str(tmp_path / "o.mp4"),
                "--pads", "0", "10")
    assert r.returncode == 2, r.stderr
    assert "--pads" in r.stderr and "requires 4 arguments" in r.stderr and "Traceback" not in r.stderr


def test_weights_list_names_the_file_to_use_and_agrees_with_verify(fake_ckpt, tmp_path):
    """`weights list` shows the file name each entry is looked for under, and a file of the wrong size is not
    'yes' there while `weights verify` calls it a mismatch."""
    import shutil

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(fake_ckpt("wav2lip"), home / "wav2lip_gan.pth")  # a fake: not the registry's size
    env = {"LIPSYNC_HOME": str(home), "COLUMNS": "250", "INSIGHTFACE_HOME": str(tmp_path / "if"),
           "TORCH_HOME": str(tmp_path / "torch")}
    r = run_cli("weights", "list", env=env)
    assert r.returncode == 0, r.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in r.stdout.splitlines() if line.startswith("│")}
    assert rows["wav2lip_gan"][1] == "wav2lip_gan.pth" and rows["buffalo_l"][1] == "buffalo_l/det_10g.onnx"
    assert rows["s3fd"][1] == "s3fd-619a316812.pth" and rows["s3fd"][3] == "missing"
    assert rows["wav2lip_gan"][3].startswith("wrong size ") and str(home / "wav2lip_gan.pth") in r.stdout
    r = run_cli("weights", "verify", "wav2lip_gan", env=env)
    assert r.returncode == 1 and "MISMATCH" in r.stdout


def test_pass_through_lines_name_the_dubbed_people(tmp_path):
    """With --ref-face / --speaker the line names whom the frames miss (the CLI path is the test above)."""
    from pathlib import Path

    from lipsync_cli.dub import DubOptions, DubResult, _dubbed_absent
    from lipsync_cli.speakers import Reference, SpeakerSetup, SpeakerSpec

    def lines(setup, no_face, others):
        who = _dubbed_absent(DubOptions(speakers=setup))
        return DubResult(Path("o.mp4"), 100, 25.0, 0, no_face, 4.0, 1.0, {}, {}, others_on_screen=others,
                         dubbed_absent=who).no_face_lines()

    alice = SpeakerSpec(reference=Reference(photo=Path("alice.jpg")))
    bob = SpeakerSpec(reference=Reference(photo=Path("bob.jpg")), name="Bob")
    gone = [*range(10, 25), *range(80, 96)]
    assert lines(SpeakerSetup(speakers=(alice,)), [3, *gone], dict.fromkeys(gone, 2)) == [
        "frame 3: no face found; passed through unchanged",
        "frames 10-24, 80-95 (31 frames): the dubbed person (alice.jpg) is not on screen (2 other faces); "
        "passed through unchanged"]
    assert lines(SpeakerSetup(speakers=(alice, bob)), [7, 8], {7: 1, 8: 3}) == [
        "frames 7-8 (2 frames): none of the dubbed people (alice.jpg, Bob) is on screen (1-3 other faces); "
        "passed through unchanged"]
