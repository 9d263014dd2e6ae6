"""The dub engine's resource rules: linear looping, sticky out-of-memory halving, frames in flight bounded in
bytes, audio features whose memory does not grow with the length."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synth import make_audio, run_ffmpeg

from lipsync_cli.dub import DubOptions, dub
from lipsync_cli.media import decode as decode_mod
from lipsync_cli.media import spool as spool_mod
from lipsync_cli.media.spool import loop_index, output_frames

BOX = (40, 20, 120, 100)  # inside the 160x120 synthetic frames


def numbered_video(path, n: int, size=(160, 120)):
    """A clip of ``n`` frames at 25 fps whose frame k is a flat grey of level 8 k (lossless: exact pixels)."""
    w, h = size
    expr = "8*N"
    run_ffmpeg(["-f", "lavfi", "-i", f"color=c=black:s={w}x{h}:r=25:d={n / 25}",
                "-vf", f"geq=lum='{expr}':cb=128:cr=128", "-frames:v", str(n),
                "-c:v", "libx264rgb", "-qp", "0", "-pix_fmt", "rgb24", str(path)])
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    return {"v12": numbered_video(d / "v12.mkv", 12), "speech": make_audio(d / "speech.wav", seconds=2.0),
            "dir": d}


@pytest.fixture()
def decode_counter(monkeypatch):
    """Counts frames yielded by every FrameReader opened during the test (what looping costs in decoding)."""
    counts = {"frames": 0, "passes": 0}
    orig = decode_mod.FrameReader.__iter__

    def counting_iter(self):
        counts["passes"] += 1
        for frame in orig(self):
            counts["frames"] += 1
            yield frame

    monkeypatch.setattr(decode_mod.FrameReader, "__iter__", counting_iter)
    return counts


@pytest.mark.parametrize("mode", ["pingpong", "forward"])
def test_looping_decodes_each_output_frame_at_most_once(clips, decode_counter, mode):
    with decode_mod.FrameReader(clips["v12"]) as reader:
        src = list(reader)
    n = len(src)
    assert n == 12
    decode_counter["frames"] = decode_counter["passes"] = 0
    n_out = 10 * n + 3
    got = list(output_frames(clips["v12"], False, 25.0, n_out, mode))
    assert [s for s, _ in got] == [loop_index(i, n, mode) for i in range(n_out)]
    for s, f in got:
        assert np.array_equal(f, src[s])  # the exact source pixels, in loop order
    # linear: never more decoded frames than output frames; pingpong decodes the video once (then the spool)
    assert decode_counter["frames"] <= n_out
    if mode == "pingpong":
        assert decode_counter["frames"] == n and decode_counter["passes"] == 1


def test_pingpong_without_room_for_the_spool_still_gives_the_right_frames(clips, monkeypatch):
    monkeypatch.setattr(spool_mod, "_spool_fits", lambda *a: False)
    with decode_mod.FrameReader(clips["v12"]) as reader:
        src = list(reader)
    stats: dict = {}
    got = list(output_frames(clips["v12"], False, 25.0, 40, "pingpong", stats=stats))
    assert [s for s, _ in got] == [loop_index(i, 12, "pingpong") for i in range(40)]
    assert all(np.array_equal(f, src[s]) for s, f in got)
    assert stats["decoded"] > 40  # the fallback re-decodes (this is what the spool saves)


def test_spool_leaves_no_file_behind(clips, tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    frames = output_frames(clips["v12"], False, 25.0, 30, "pingpong", spool_dir=str(spool_dir))
    next(frames)
    assert list(spool_dir.iterdir()) == []  # unnamed from the start: nothing to leave behind, even on SIGKILL
    frames.close()


class _Calls(list):
    """Shared by the model and its inference copy (the dub folds BatchNorm into a deep copy)."""

    def __deepcopy__(self, memo):
        return self


class _Recorder(torch.nn.Module):
    """A stand-in generator: returns its input face, records batch sizes, runs out of memory above a size."""

    def __init__(self, oom_above: int | None = None, error: type[BaseException] | None = None,
                 message: str = "CUDA out of memory"):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)  # a parameter, so .to() works
        self.calls = _Calls()
        self.oom_above = oom_above
        self.error = error or torch.cuda.OutOfMemoryError
        self.message = message

    def forward(self, mel, face):
        self.calls.append(len(face))
        if self.oom_above is not None and len(face) > self.oom_above:
            raise self.error(self.message)
        return face[:, 3:].float()


def test_out_of_memory_halving_sticks_for_the_rest_of_the_run(clips, tmp_path):
    model = _Recorder(oom_above=4)
    res = dub(clips["v12"], clips["speech"], tmp_path / "o.mp4",
              DubOptions(box=BOX, batch_size=16, precision="fp32", device="cpu", silence="model"), model=model)
    assert res.frames == 50 and res.faces == 50
    assert model.calls[:3] == [16, 8, 4]  # the first batch fails twice, then fits at 4
    assert all(c <= 4 for c in model.calls[3:]), model.calls  # and never tries more again
    assert res.batch_size == 4


def test_mps_out_of_memory_is_caught_and_other_errors_are_not(clips, tmp_path):
    model = _Recorder(oom_above=8, error=RuntimeError, message="MPS backend out of memory (MPS allocated: 1 GB)")
    res = dub(clips["v12"], clips["speech"], tmp_path / "m.mp4",
              DubOptions(box=BOX, batch_size=16, precision="fp32", device="cpu", silence="model"), model=model)
    assert res.batch_size == 8 and max(model.calls[1:]) == 8
    bug = _Recorder(oom_above=0, error=RuntimeError, message="mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError, match="shapes"):
        dub(clips["v12"], clips["speech"], tmp_path / "b.mp4",
            DubOptions(box=BOX, batch_size=16, precision="fp32", device="cpu", silence="model"), model=bug)
    assert bug.calls == [16]  # a bug is not retried as if memory ran out
    assert not (tmp_path / "b.mp4").exists()


def test_frames_in_flight_are_bounded_in_bytes(clips, tmp_path):
    frame_bytes = 160 * 120 * 3
    model = _Recorder()
    res = dub(clips["v12"], clips["speech"], tmp_path / "p.mp4",
              DubOptions(box=BOX, batch_size=128, precision="fp32", device="cpu", silence="model",
                         max_pending_bytes=5 * frame_bytes), model=model)
    assert res.frames == 50
    # 128 asked, 5 frames' worth of bytes allowed: batches of 2, so that two batches fit in flight
    assert max(model.calls) == 2 and sum(model.calls) == 50
    assert res.pending_bytes == (res.pending_bytes[0], 5 * frame_bytes) and res.pending_bytes[0] <= 5 * frame_bytes


def test_mel_memory_does_not_grow_with_the_audio():
    import tracemalloc

    from lipsync_cli.audio import melspectrogram

    rng = np.random.default_rng(0)
    peaks = {}
    for seconds in (20, 300):
        wav = (rng.standard_normal(16000 * seconds) * 0.1).astype(np.float32)
        tracemalloc.start()
        mel = melspectrogram(wav)
        peaks[seconds] = tracemalloc.get_traced_memory()[1] - mel.nbytes
        tracemalloc.stop()
    # beyond its result, 5 minutes costs no more than 20 s plus a few MB (it was ~380 MB at 5 minutes)
    assert peaks[300] < peaks[20] + 8e6, peaks
