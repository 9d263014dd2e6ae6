"""One analysis pass, one render pass: how many times each command decodes the video and probes each file.

Every ffmpeg child of the process is counted by its command line (``subprocess.Popen``, the seam every ffmpeg
call goes through, wherever the code that starts it lives): a header read (``ffmpeg -i FILE`` with no output) and
a packet scan (``-f framecrc``) are the probe of FILE; a ``-f rawvideo`` output after ``-i FILE`` is a decode of
FILE's frames. The commands run in this process (``lipsync_cli.cli.run``, and ``lipsync batch`` with its inline
worker), so nothing they start escapes the count.

Real faces: facerec_two_people.jpg as a 1 s clip with a sound track, the SCRFD detector of ../shared, the fake
ArcFace and SyncNet, the fake Wav2Lip.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import SCRFD_ONNX, media
from tests.synth import ffmpeg_exe, make_audio

cv2 = pytest.importorskip("cv2")

SIZE = (564, 330)  # facerec_two_people.jpg at half size
FPS = 25


class FfmpegCount:
    """What the ffmpeg children started so far did, per input file: header reads, packet scans, frame decodes."""

    def __init__(self):
        self.headers: Counter[str] = Counter()
        self.scans: Counter[str] = Counter()
        self.decodes: Counter[str] = Counter()

    def record(self, args) -> None:
        cmd = [str(a) for a in args] if isinstance(args, (list, tuple)) else []
        if not cmd or "ffmpeg" not in Path(cmd[0]).name or "-i" not in cmd:
            return
        k = len(cmd) - 1 - cmd[::-1].index("-i")  # the last input
        path = str(Path(cmd[k + 1]).resolve()) if cmd[k + 1] not in ("-", "pipe:") else cmd[k + 1]
        after = cmd[k + 2:]
        if not after:
            self.headers[path] += 1
        elif "framecrc" in after:
            self.scans[path] += 1
        elif "rawvideo" in after:
            self.decodes[path] += 1

    def of(self, path: Path) -> tuple[int, int, int]:
        p = str(Path(path).resolve())
        return self.headers[p], self.scans[p], self.decodes[p]

    def summary(self) -> dict[str, tuple[int, int, int]]:
        """{file name: (header reads, packet scans, decodes)}: the assertion messages."""
        files = set(self.headers) | set(self.scans) | set(self.decodes)
        return {Path(p).name: (self.headers[p], self.scans[p], self.decodes[p]) for p in sorted(files)}


@pytest.fixture
def ffmpeg_count(monkeypatch) -> FfmpegCount:
    count = FfmpegCount()
    real = subprocess.Popen

    class Counted(real):
        def __init__(self, args, *a, **kw):
            count.record(args)
            super().__init__(args, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", Counted)
    return count


@pytest.fixture(scope="module")
def scene(tmp_path_factory, fake_ckpt):
    """A 1 s clip of two people with a sound track, a photo of the left one, a new speech, the weights."""
    from tests.fake_arcface import write_fake_arcface
    from tests.test_enhance import TinyRestorer, export

    folder = tmp_path_factory.mktemp("analysis")
    image = cv2.imread(str(media("facerec_two_people.jpg")))[:660, :1126]
    image = cv2.resize(image, SIZE, interpolation=cv2.INTER_AREA)
    clip = folder / "two.mp4"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24",
                    "-s", f"{SIZE[0]}x{SIZE[1]}", "-r", str(FPS), "-i", "-", "-f", "lavfi", "-i",
                    "sine=frequency=300:duration=1", "-t", "1", "-c:v", "libx264", "-preset", "ultrafast",
                    "-crf", "18", "-pix_fmt", "yuv420p", "-c:a", "aac", str(clip)],
                   input=image.tobytes() * FPS, check=True, capture_output=True)
    photo = folder / "left.png"
    cv2.imwrite(str(photo), image[0:150, 75:240])
    return {"clip": clip, "photo": photo, "folder": folder,
            "fr": make_audio(folder / "fr.wav", seconds=1.0), "de": make_audio(folder / "de.wav", seconds=1.0),
            "wav2lip": fake_ckpt("wav2lip"), "syncnet": fake_ckpt("syncnet_v2"),
            "arcface": write_fake_arcface(folder / "w600k_r50.onnx"),
            "restorer": export(TinyRestorer(), folder / "tiny.onnx", 64, ["face_in"])}


DETECT = ["--detector", "insightface", "--detector-weights", str(SCRFD_ONNX), "--det-size", "320",
          "--device", "cpu", "--offline"]


def _run(*args: str) -> None:
    from lipsync_cli.cli import run

    rc = run([*args])
    assert rc == 0, args


def _dub_args(scene, name: str, *extra: str) -> list[str]:
    return ["dub", str(scene["clip"]), str(scene["fr"]), "-o", str(scene["folder"] / f"{name}.mp4"),
            "--checkpoint", str(scene["wav2lip"]), "--batch-size", "8", "-q", *DETECT, *extra]


VARIANTS = {
    "plain": [],
    "ref-face": ["--ref-face", "{photo}", "--recognition-weights", "{arcface}", "--identity-threshold", "0.3"],
    "speaker-auto": ["--speaker", "auto", "--syncnet", "{syncnet}"],
    "enhance": ["--enhance", "--enhancer-weights", "{restorer}"],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dub_decodes_the_video_twice_at_most_and_probes_each_file_once(variant, scene, ffmpeg_count):
    """`lipsync dub`: one analysis decode (faces, cuts, identity, speaking scores) and one render decode of the
    video; one probe (header and packet scan) of the video and of the audio."""
    extra = [a.format(**{k: str(v) for k, v in scene.items()}) for a in VARIANTS[variant]]
    _run(*_dub_args(scene, variant, *extra))
    headers, scans, decodes = ffmpeg_count.of(scene["clip"])
    assert (headers, scans, decodes) == (1, 1, 2), (variant, ffmpeg_count.summary())
    assert ffmpeg_count.of(scene["fr"])[0] == 1, ffmpeg_count.summary()


def test_detect_with_identity_and_scores_decodes_the_video_once(scene, ffmpeg_count):
    """`lipsync detect --identity --speaking`: faces, cuts, embeddings and speaking scores from one decode."""
    _run("detect", str(scene["clip"]), "-o", str(scene["folder"] / "track.json"), "-q", *DETECT, "--identity",
         "--speaking", "--syncnet", str(scene["syncnet"]), "--recognition-weights", str(scene["arcface"]))
    assert ffmpeg_count.of(scene["clip"]) == (1, 1, 1), ffmpeg_count.summary()


def test_batch_of_two_languages_analyses_the_video_once(scene, ffmpeg_count, tmp_path):
    """`lipsync batch` of one video in two languages: the video is probed once and analysed once for both; each
    language renders it once."""
    manifest = tmp_path / "jobs.csv"
    manifest.write_text(f"video,audio\n{scene['clip']},{scene['fr']}\n{scene['clip']},{scene['de']}\n")
    from lipsync_cli.cli import run

    rc = run(["batch", str(manifest), "-o", str(tmp_path / "out"), "--checkpoint", str(scene["wav2lip"]),
              "--device", "cpu", "--offline", "-q", "--set", "detector=insightface", "--set",
              f"detector_weights={SCRFD_ONNX}", "--set", "det_size=320", "--set", "batch_size=8"])
    assert rc == 0
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 2
    assert ffmpeg_count.of(scene["clip"]) == (1, 1, 3), ffmpeg_count.summary()
    assert ffmpeg_count.of(scene["fr"])[0] == 1 and ffmpeg_count.of(scene["de"])[0] == 1, ffmpeg_count.summary()
