"""The speed work must not change a pixel: the fp32 frames of a real 720p clip, hashed before the encoder, equal
the ones the release before it made (constants recorded on that code, same ffmpeg, same torch).

The hash covers what ``dub`` hands the encoder (``frame_sink``), so the encoder's version does not matter; the
decoded source is hashed too, and when this ffmpeg decodes the clip differently from the one the constants were
recorded with, the test skips (the frames would differ for a reason that is not ours). fp32 convolutions round
differently with the number of torch threads (oneDNN splits the sums otherwise), so each case pins its count;
the counts a dub uses by default must keep both hashes."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
from conftest import media
from synth import ffmpeg_exe, run_ffmpeg

from lipsync_cli import DubOptions, dub

BOX = (600, 60, 900, 460)  # the face in liveportrait_s18.mp4 (the benchmark's box)
SECONDS = 1.0
# sha256 of the first 30 decoded source frames (bgr24), of what ffmpeg gives on the machine that recorded EXPECTED
SOURCE_SHA = "ef644117412d7145ba7ec8c8cc312bc65f996251647caba3799b5e295bab3a35"
EXPECTED = {  # sha256 of the 30 output frames (bgr24, in order), per (options, torch threads); recorded on e4f8068
    ("hold", 2): "e8596cc9ef64ae5839f9d40257bcd98adb5ed0e9c9fcaedc2818177a97f55b9b",
    ("hold", 1): "f49fec23c26c94f8491b9f318e01ffae9b3040336fb865c253add39cdf77e1f0",
    ("model", 2): "258581aa9a9987a9cc7b9a26104876d23d3d7909cf9e5a0791c6d8ec6ec814b4",
    ("model", 1): "cdc01ffde7bc73eb2d69ada5705b14837d92353a457930cd0b9845129908b758",
    ("paste", 2): "4ac65f7c59ec0f2404b017e9716424e8f3bdc7387c00e2b8bcdf24f01dee7e43",
    ("paste", 1): "55a65b5cf92d9b97998fa7f3484a92525f3c308fc1a97d5629c82047cc1e32a9",
}
CASES = {
    "hold": {},  # the defaults: feather blend, the mouth held closed in the pauses (silero VAD)
    "model": {"silence": "model"},  # the generator on every frame (no mouth plan)
    "paste": {"silence": "model", "blend": "paste"},  # Wav2Lip's own blend
}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """1 s of liveportrait_s18.mp4 (1280x720, 30 fps) and 1 s of real speech."""
    d = tmp_path_factory.mktemp("identity")
    video = media("liveportrait_s18.mp4")
    speech = d / "speech.wav"
    run_ffmpeg(["-i", str(media("retalking_2.wav")), "-t", str(SECONDS), str(speech)])
    raw = subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(video), "-frames:v", "30",
                          "-f", "rawvideo", "-pix_fmt", "bgr24", "-"], capture_output=True, check=True).stdout
    return video, speech, hashlib.sha256(raw).hexdigest()


@pytest.fixture
def torch_threads(request):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("case, torch_threads", [("hold", 2), ("model", 1), ("paste", 2)], indirect=["torch_threads"])
def test_fp32_frames_unchanged(clip, case, torch_threads, fake_ckpt, tmp_path):
    video, speech, source_sha = clip
    if SOURCE_SHA != source_sha:
        pytest.skip(f"this ffmpeg decodes {video.name} differently from the one the hashes were recorded with")
    digest, count = hashlib.sha256(), []

    def sink(i, frame):
        count.append(i)
        digest.update(frame.tobytes())

    res = dub(video, speech, tmp_path / "out.mp4",
              DubOptions(checkpoint=fake_ckpt("wav2lip"), box=BOX, precision="fp32", device="cpu", offline=True,
                         **CASES[case]), frame_sink=sink)
    assert count == list(range(30)) and res.frames == 30 and res.faces == 30
    assert digest.hexdigest() == EXPECTED[case, torch_threads]
