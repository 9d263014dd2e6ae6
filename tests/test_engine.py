"""The pipelined dub engine (lipsync_cli.engine, render._EngineRun): the same frames as the sequential algorithm,
errors from any stage raised promptly with every thread stopped, frames in flight bounded in bytes, queue
statistics, and the device-side pre/post-processing equal to blend.prepare_batch / blend.to_uint8."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from synth import make_audio, make_video

from lipsync_cli import blend as blending
from lipsync_cli.constants import MEL_WINDOW
from lipsync_cli.dub import DubOptions, dub
from lipsync_cli.engine import END, ByteBudget, Channel, CpuUse, Pipeline, Stopped, format_cpu, format_stats
from lipsync_cli.render import _EngineRun, engine_batch_frames, generate, prepare_for_inference

H, W = 120, 160
BOXES = [(40, 20, 120, 100), (0, 10, 60, 70)]  # two faces in the synthetic frames
DEADLINE_S = 30  # a stage error that does not surface by then is a hang


def _engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lipsync-") and t.is_alive()]


@pytest.fixture(scope="module")
def wav2lip(fake_ckpt):
    from lipsync_cli.checkpoint import load_generator

    return prepare_for_inference(load_generator(fake_ckpt("wav2lip")), "cpu", "fp32")


class _Writer:
    def __init__(self, fail_at: int | None = None):
        self.frames: list[np.ndarray] = []
        self.fail_at = fail_at

    def write(self, frame: np.ndarray) -> None:
        if self.fail_at is not None and len(self.frames) == self.fail_at:
            raise OSError(28, "No space left on device")
        self.frames.append(frame.copy())


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def _faces_of(j: int):
    """Two faces (voices 0 and 1) on even frames, one on frames 1 mod 4, none on frames 3 mod 4."""
    if j % 2 == 0:
        return [(BOXES[0], 0), (BOXES[1], 1)]
    return [(BOXES[0], 1)] if j % 4 == 1 else []


def _run(model, frames, *, batch=4, budget=1 << 30, sink=None, enhancer=None, mels=None, opened=None):
    n = len(frames)
    rng = np.random.default_rng(1)
    mels = mels if mels is not None else [rng.standard_normal((80, 40 + 2 * n)).astype(np.float32) for _ in range(2)]
    stage_s = {k: 0.0 for k in ("decode", "prepare", "generate", "blend", "enhance", "encode")}
    run = _EngineRun(model=model, device="cpu", precision="fp32", gen={"batch": batch},
                     mel_ts=[torch.from_numpy(m) for m in mels], starts=np.arange(n) * 2, blend_mode="feather",
                     enhancer=enhancer, faces_of=_faces_of, frame_bytes=H * W * 3, batch_frames=batch,
                     budget_bytes=budget, n_out=n, stage_s=stage_s, stage_n={k: 0 for k in stage_s},
                     frame_sink=sink)
    return run, mels


def _source(frames, opened: dict | None = None, fail_at: int | None = None):
    def open_frames():
        def gen():
            try:
                for j, f in enumerate(frames):
                    if j == fail_at:
                        raise ValueError("decoder broke")
                    yield j, f.copy()
            finally:
                if opened is not None:
                    opened["closed"] = True

        return gen()

    return open_frames


def _sequential_reference(model, frames, mels, batch: int) -> list[np.ndarray]:
    """The loop the engine replaced, in one thread: numpy prepare_batch -> model -> numpy to_uint8 -> blend."""
    out = [f.copy() for f in frames]
    for b0 in range(0, len(out), batch):
        idx = [(j, box, v) for j in range(b0, min(b0 + batch, len(out))) for box, v in _faces_of(j)]
        if not idx:
            continue
        crops = np.stack([blending.crop_face(out[j], box) for j, box, _ in idx])
        faces = torch.from_numpy(blending.prepare_batch(crops)).contiguous(memory_format=torch.channels_last)
        m = torch.stack([torch.from_numpy(mels[v][:, 2 * j:2 * j + MEL_WINDOW]) for j, _, v in idx]).unsqueeze(1)
        with torch.inference_mode():
            pred = model(m, faces).float().numpy()
        for g, (j, box, _) in zip(blending.to_uint8(pred), idx):
            blending.blend(out[j], g, box, "feather")
    return out


def test_engine_frames_equal_the_sequential_loop(wav2lip):
    """Several faces per frame, one mel per voice, frames without a face: bit-identical, in order."""
    frames = _frames(10)
    seen: list[int] = []
    run, mels = _run(wav2lip, frames, sink=lambda i, f: seen.append(i))
    writer = _Writer()
    run.run(_source(frames), writer)
    ref = _sequential_reference(wav2lip, frames, mels, batch=4)
    assert seen == list(range(10)) and run.frames == 10
    assert run.no_face == [3, 7]
    assert run.n_faces == sum(len(_faces_of(j)) for j in range(10)) == 13
    for j in range(10):
        assert np.array_equal(writer.frames[j], ref[j]), j
    changed = [j for j in range(10) if not np.array_equal(writer.frames[j], frames[j])]
    assert changed == [j for j in range(10) if _faces_of(j)]  # the test can fail: faces were redrawn
    assert run.stage_n["generate"] == 13 and run.stage_n["encode"] == 10 and run.stage_s["generate"] > 0


def test_dub_frames_equal_the_sequential_loop(wav2lip, fake_ckpt, tmp_path):
    """Through dub() on a clip with the fake released weights: the frames the sequential loop made."""
    from lipsync_cli.audio import load_audio, mel_start, melspectrogram
    from lipsync_cli.media.spool import output_frames

    video = make_video(tmp_path / "v.mp4", seconds=0.4, fps=25)
    audio = make_audio(tmp_path / "a.wav", seconds=0.6)  # longer than the video: pingpong looping too
    got: dict[int, np.ndarray] = {}
    res = dub(video, audio, tmp_path / "o.mp4",
              DubOptions(checkpoint=fake_ckpt("wav2lip"), box=BOXES[0], precision="fp32", device="cpu",
                         batch_size=4, silence="model"),  # the loop below: the generator on every window
              frame_sink=lambda i, f: got.__setitem__(i, f.copy()))
    assert res.frames == len(got) == 15
    mel = melspectrogram(load_audio(audio))
    starts = mel_start(np.arange(15), 25.0, lead=0, n_mel=mel.shape[1])
    src = [f for _, f in output_frames(video, False, 25.0, 15, "pingpong")]
    mt = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))
    for b0 in range(0, 15, 4):
        js = range(b0, min(b0 + 4, 15))
        crops = np.stack([blending.crop_face(src[j], BOXES[0]) for j in js])
        faces = torch.from_numpy(blending.prepare_batch(crops)).contiguous(memory_format=torch.channels_last)
        m = torch.stack([mt[:, starts[j]:starts[j] + MEL_WINDOW] for j in js]).unsqueeze(1)
        with torch.inference_mode():
            mouths = blending.to_uint8(wav2lip(m, faces).float().numpy())
        for j, g in zip(js, mouths):
            blending.blend(src[j], g, BOXES[0], "feather")
            assert np.array_equal(got[j], src[j]), j


class _Boom(Exception):
    pass


class _Broken(torch.nn.Module):
    def __init__(self, inner, fail_on_call: int):
        super().__init__()
        self.inner, self.calls, self.fail_on_call = inner, 0, fail_on_call

    def forward(self, mel, face):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise _Boom("generator broke")
        return self.inner(mel, face)


class _Identity(torch.nn.Module):
    def forward(self, mel, face):
        return face[:, 3:]


class _Enhancer:
    def __init__(self, fail: bool = False):
        self.fail, self.calls = fail, 0

    def apply(self, frames, boxes):
        self.calls += 1
        if self.fail and self.calls == 2:
            raise _Boom("enhancer broke")
        for f, (x1, y1, x2, y2) in zip(frames, boxes):
            f[y1:y2, x1:x2] //= 2


@pytest.mark.parametrize("stage", ["decode", "prepare", "generate", "blend", "enhance", "hand-off", "encode",
                                   "interrupt"])
def test_an_error_in_any_stage_is_raised_promptly_and_stops_every_thread(stage, monkeypatch):
    """The stage's own exception reaches the caller within seconds; no engine thread is left; the decoder is
    closed. A tiny byte budget makes the decode stage wait on it when the error happens (the worst case)."""
    frames = _frames(40)
    opened: dict = {}
    model: torch.nn.Module = _Broken(_Identity(), 3) if stage == "generate" else _Identity()
    sink = None
    if stage == "hand-off":
        sink = lambda i, f: (_ for _ in ()).throw(_Boom("sink broke")) if i == 9 else None  # noqa: E731
    if stage == "interrupt":
        sink = lambda i, f: (_ for _ in ()).throw(KeyboardInterrupt) if i == 9 else None  # noqa: E731
    run, _ = _run(model, frames, budget=6 * H * W * 3, batch=2, sink=sink,
                  enhancer=_Enhancer(fail=stage == "enhance") if stage == "enhance" else None)
    calls = {"n": 0}
    if stage in ("prepare", "blend"):
        real = getattr(run, stage)

        def flaky(b):
            calls["n"] += 1
            if calls["n"] == 3:
                raise _Boom(f"{stage} broke")
            return real(b)

        monkeypatch.setattr(run, stage, flaky)
    writer = _Writer(fail_at=7 if stage == "encode" else None)
    expected = {"encode": OSError, "interrupt": KeyboardInterrupt, "decode": ValueError}.get(stage, _Boom)
    t = time.perf_counter()
    with pytest.raises(expected):
        run.run(_source(frames, opened, fail_at=10 if stage == "decode" else None), writer)
    assert time.perf_counter() - t < DEADLINE_S
    assert _engine_threads() == []
    assert opened.get("closed") is True
    assert run.frames < 40


def test_frames_in_flight_stay_within_the_byte_budget():
    """Frames decoded but not yet written never exceed the budget, measured outside the engine."""
    frames = _frames(30)
    budget_frames = 5
    state = {"decoded": 0, "max": 0}

    def open_frames():
        def gen():
            for j, f in enumerate(frames):
                state["decoded"] += 1
                yield j, f.copy()
        return gen()

    class Counting(_Writer):
        def write(self, frame):
            state["max"] = max(state["max"], state["decoded"] - len(self.frames))
            time.sleep(0.002)  # a slow encoder: the budget, not the encoder's speed, keeps memory bounded
            super().write(frame)

    batch = engine_batch_frames(128, budget_frames * H * W * 3, H * W * 3)
    assert batch == 2  # half the budget: two batches can be in flight
    run, _ = _run(_Identity(), frames, batch=batch, budget=budget_frames * H * W * 3)
    writer = Counting()
    run.run(open_frames, writer)
    assert len(writer.frames) == 30
    assert 2 <= state["max"] <= budget_frames, state
    assert run.peak_bytes <= budget_frames * H * W * 3


def test_queue_stats_are_present_and_sane():
    frames = _frames(24)
    run, _ = _run(_Identity(), frames, batch=2, enhancer=_Enhancer())
    run.run(_source(frames), _Writer())
    qs = run.queue_stats
    assert list(qs) == ["decode>prepare", "prepare>generate", "generate>blend", "blend>enhance", "enhance>out",
                        "out>encode"]
    for name, q in qs.items():
        assert 1 <= q["max"] <= q["capacity"], (name, q)  # every item passed through every queue
        assert 0 <= q["mean"] <= q["capacity"], (name, q)
    assert qs["out>encode"]["unit"] == "frames" and qs["out>encode"]["capacity"] == 4
    lines = format_stats(run.stage_s, run.stage_n, run.wall, qs, (run.peak_bytes, 1 << 30))
    text = "\n".join(lines)
    for stage in ("decode", "prepare", "generate", "blend", "enhance", "encode"):
        assert f"  {stage}" in text
    assert text.count("<- limits the run") == 1 and "out>encode" in text and "MiB budget" in text


def test_dub_result_carries_the_engine_stats(tmp_path):
    video = make_video(tmp_path / "v.mp4", seconds=0.4, fps=25)
    audio = make_audio(tmp_path / "a.wav", seconds=0.4)
    res = dub(video, audio, tmp_path / "o.mp4", DubOptions(box=BOXES[0], precision="fp32", device="cpu",
                                                           batch_size=2), model=_Identity())
    assert res.frames == 10 and res.stage_frames["prepare"] == 10 and res.stage_frames["encode"] == 10
    assert set(res.queue_stats) == {"decode>prepare", "prepare>generate", "generate>blend", "blend>out",
                                    "out>encode"}
    assert 0 < res.pending_bytes[0] <= res.pending_bytes[1] == DubOptions().max_pending_bytes
    assert 0 < res.stream_seconds <= res.wall_seconds
    assert any("limits the run" in line for line in res.stats_lines())


def test_cpu_lines_add_up():
    cpu = CpuUse(stages={"decode": 0.5, "prepare": 0.1, "generate": 6.0, "blend": 0.9, "encode": 0.2},
                 workers=5.0, process=13.5, children=4.5, cores=2, wall=10.35)
    n = {"decode": 100, "prepare": 100, "generate": 100, "blend": 100, "encode": 100}
    text = "\n".join(format_cpu(cpu, n, 100))
    assert "generate    11.00 s   110.0 ms/face  (6.00 its thread + 5.00 native threads: torch's pool)" in text
    assert "other        0.80 s     8.0 ms/frame" in text  # 13.5 - (0.5 + 0.1 + 11 + 0.9 + 0.2)
    assert "total       18.00 s   180.0 ms/frame; packed on 2 cores: 9.00 s, wall 10.35 s = 1.15x" in text


def test_stats_show_cpu_seconds_per_stage_and_the_packing(fake_ckpt, tmp_path):
    video = make_video(tmp_path / "v.mp4", seconds=0.6, fps=25, size=(320, 240))
    audio = make_audio(tmp_path / "a.wav", seconds=0.6)
    res = dub(video, audio, tmp_path / "o.mp4", DubOptions(checkpoint=fake_ckpt("wav2lip"), box=(100, 40, 260, 200),
                                                           precision="fp32", device="cpu", batch_size=4))
    cpu = res.cpu
    assert set(cpu.stages) == {"decode", "prepare", "generate", "blend", "encode"}
    for name, s in cpu.stages.items():  # a stage's own thread, while busy: at most its busy time
        assert 0 <= s <= res.stage_seconds[name] + 0.02, (name, s, res.stage_seconds[name])
    assert cpu.stages["generate"] > 0 and cpu.children > 0  # the generator ran; so did ffmpeg (decode, encode)
    assert cpu.process + 0.02 >= sum(cpu.stages.values()) + cpu.workers
    assert cpu.cores >= 1 and cpu.total == cpu.process + cpu.children
    text = "\n".join(res.stats_lines())
    assert "CPU seconds" in text and "ms/face" in text and f"packed on {cpu.cores} core" in text
    assert res.stream_seconds <= cpu.wall <= res.wall_seconds
    ratio = float(text.split(f"wall {cpu.wall:.2f} s = ")[1].split("x")[0])
    assert ratio == pytest.approx(cpu.wall / (cpu.total / cpu.cores), abs=0.006)


def test_byte_budget_and_channel_give_up_when_stopped():
    stop = threading.Event()
    budget = ByteBudget(10)
    budget.acquire(8, stop)
    ch = Channel("x", 1, stop)
    ch.put(1)
    threading.Timer(0.2, stop.set).start()
    t = time.perf_counter()
    with pytest.raises(Stopped):
        budget.acquire(5, stop)  # 8 + 5 > 10: waits until stopped
    with pytest.raises(Stopped):
        ch.put(2)  # full
    assert time.perf_counter() - t < 5
    lone = ByteBudget(10)
    lone.acquire(25, stop)  # larger than the budget, but nothing else is held: let through
    assert lone.peak == 25
    assert ch.stats().max == 1 and END is not None


def test_pipeline_raises_the_first_stage_error():
    pipe = Pipeline()
    a, b = pipe.channel("a", 2), pipe.channel("b", 2)

    def source():
        for k in range(100):
            a.put(k)
        a.put(END)

    pipe.spawn("src", source)
    pipe.map("half", lambda k: 1 // (k - 5), a, b)  # ZeroDivisionError at item 5
    with pytest.raises(ZeroDivisionError):
        pipe.run(b, lambda item: None)
    assert _engine_threads() == []


# ---------------------------------------------------------------------------------------------------------------
# the device side: uint8 in and out, masking and scaling as tensor ops, the model cast once


def test_prepare_batch_tensor_equals_prepare_batch():
    crops = np.random.default_rng(0).integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    want = blending.prepare_batch(crops)
    got = blending.prepare_batch_tensor(torch.from_numpy(crops))
    assert got.dtype == torch.float32 and tuple(got.shape) == (5, 6, 96, 96)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert np.array_equal(got.numpy(), want)
    assert float(got[:, :3, 48:].abs().max()) == 0.0 and float(got[:, 3:, 48:].max()) > 0


def test_to_uint8_tensor_equals_to_uint8():
    rng = np.random.default_rng(0)
    pred = rng.random((4, 3, 96, 96), dtype=np.float32)
    pred[0, 0, 0, :6] = [0.0, 1.0, 1 / 255, 2 / 255, 254.5 / 255, np.nextafter(np.float32(1 / 255), 0)]
    got = blending.to_uint8_tensor(torch.from_numpy(pred))
    assert got.dtype == torch.uint8 and tuple(got.shape) == (4, 96, 96, 3) and got.is_contiguous()
    assert np.array_equal(got.numpy(), blending.to_uint8(pred))
    half = torch.from_numpy(pred).bfloat16()  # a bf16 model's output: rounded as its float32 value
    assert np.array_equal(blending.to_uint8_tensor(half).numpy(), blending.to_uint8(half.float().numpy()))


def test_generate_returns_uint8_mouths_equal_to_the_float_path(wav2lip):
    rng = np.random.default_rng(2)
    crops = torch.from_numpy(rng.integers(0, 256, (6, 96, 96, 3), dtype=np.uint8))
    mels = torch.from_numpy(rng.standard_normal((6, 1, 80, 16)).astype(np.float32))
    state = {"batch": 4}  # two micro-batches
    got = generate(wav2lip, mels, crops, "cpu", "fp32", state)
    assert got.dtype == np.uint8 and got.shape == (6, 96, 96, 3)
    faces = torch.from_numpy(blending.prepare_batch(crops.numpy())).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = np.concatenate([blending.to_uint8(wav2lip(mels[k:k + 4], faces[k:k + 4]).numpy()) for k in (0, 4)])
    assert np.array_equal(got, want)


def test_model_is_cast_once_to_its_precision(wav2lip, fake_ckpt):
    from lipsync_cli.checkpoint import load_generator

    fp32 = wav2lip
    bf16 = prepare_for_inference(load_generator(fake_ckpt("wav2lip")), "cpu", "bf16")
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    rng = np.random.default_rng(3)
    crops = torch.from_numpy(rng.integers(0, 256, (4, 96, 96, 3), dtype=np.uint8))
    mels = torch.from_numpy(rng.standard_normal((4, 1, 80, 16)).astype(np.float32))
    a = generate(fp32, mels, crops, "cpu", "fp32", {"batch": 4}).astype(int)
    b = generate(bf16, mels, crops, "cpu", "bf16", {"batch": 4}).astype(int)
    assert np.abs(a - b).mean() < 3 and not np.array_equal(a, b)  # bf16 is close, and really bf16
