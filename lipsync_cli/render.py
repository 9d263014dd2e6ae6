"""The engine run of a dub: decode -> prepare -> generate -> blend (-> enhance) -> hand-off -> encode, each stage in
its own thread (``_EngineRun``, on ``lipsync_cli.engine``), joined by bounded queues; the frames in flight are bounded
in bytes. ``prepare_for_inference`` readies the generator once, ``generate`` runs it on a batch of face crops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lipsync_cli import blend as blending
from lipsync_cli.device import device_type
from lipsync_cli.faces.track import Box

if TYPE_CHECKING:
    from lipsync_cli.dub import ProgressFn



# ---------------------------------------------------------------------------------------------------------------
# the engine: decode -> prepare -> generate -> blend (-> enhance) -> hand-off -> encode


QUEUE_BATCHES = 2  # batches a queue between two stages holds: the next one is ready when a stage finishes one


def engine_batch_frames(batch_size: int, max_pending_bytes: int, frame_bytes: int) -> int:
    """Frames per engine batch: the generator batch, but at most half of what the byte budget holds, so two
    batches can be in flight at once (one generated while the one before is blended and encoded)."""
    return max(1, min(batch_size, max_pending_bytes // max(1, frame_bytes) // 2))


@dataclass
class _Batch:
    """Consecutive output frames on their way through the stages."""

    items: list[tuple[int, np.ndarray, list[tuple[Box, int]]]]  # (output index, frame, [(box, voice)])
    idx: list[tuple[int, Box, int]] = field(default_factory=list)  # every face: (frame in batch, box, voice)
    crops: object = None  # the generator's inputs, from its adapter's collate: (crops, audio features) tensors
    mouths: np.ndarray | None = None  # (b, S, S, 3) uint8, S the adapter's face size (96 for Wav2Lip)
    planned_out: set[int] = field(default_factory=set)  # output frames whose faces the MouthPlan left untouched
    held: list[tuple[int, int]] = field(default_factory=list)  # (voice, pause) whose held mouth this batch makes


@dataclass
class _EngineRun:
    """One streaming run of ``dub``: the stage functions, their shared state and what they counted.

    Threads (``lipsync-<stage>``): decode (frames, grouped in batches of ``batch_frames``), prepare (crops and
    mel windows as torch tensors), generate (on the device, uint8 in and out), blend, enhance (with
    ``--enhance``), encode; the caller's thread hands the blended frames over in order (``frame_sink``,
    progress, no-face list). Frames count against ``budget_bytes`` from decode until the encoder wrote them."""

    model: object
    device: str
    precision: str
    gen: dict  # {"batch": generator micro-batch}; halved for good on out-of-memory
    mel_ts: list  # one (80, T) float32 tensor per voice
    starts: np.ndarray  # mel window start of each output frame
    blend_mode: str
    enhancer: object
    faces_of: Callable[[int], list[tuple[Box, int]]]
    frame_bytes: int
    batch_frames: int
    budget_bytes: int
    n_out: int
    stage_s: dict[str, float]
    stage_n: dict[str, int]
    frame_sink: Callable[[int, np.ndarray], None] | None = None
    progress: ProgressFn | None = None
    # pauses and segments (lipsync_cli.silence): None is the speech-driven mouth on every face of every frame
    plan: object = None  # MouthPlan
    silent_mel: object = None  # (80, 16) float32 tensor: the mel window of digital silence
    held_mouths: dict = field(default_factory=dict)  # (voice, pause) -> (96, 96, 3) uint8, set by generate
    held_asked: set = field(default_factory=set)  # (voice, pause) whose mouth prepare asked for (in its thread)
    # the generator family's crop, audio features, generate and paste (lipsync_cli.generator_adapter); None: the
    # Wav2Lip family's, from model, mel_ts, starts and silent_mel
    adapter: object = None
    # results
    frames: int = 0
    n_faces: int = 0
    no_face: list[int] = field(default_factory=list)
    queue_stats: dict[str, dict] = field(default_factory=dict)
    peak_bytes: int = 0
    wall: float = 0.0
    stage_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds of each stage's thread while busy
    cpu_meter: object = None  # engine.CpuMeter of the run: sampled after each generator batch (its torch workers)

    def _busy(self, stage: str, t: float, c: float) -> None:
        """Count the busy span that started at ``perf_counter() == t`` and ``thread_time() == c`` to ``stage``."""
        self.stage_s[stage] += time.perf_counter() - t
        self.stage_cpu[stage] = self.stage_cpu.get(stage, 0.0) + time.thread_time() - c

    def __post_init__(self) -> None:
        if self.adapter is None:
            from lipsync_cli.generator_adapter import Wav2LipAdapter

            self.adapter = Wav2LipAdapter(self.model, self.device, self.precision, self.mel_ts, self.starts,
                                          self.silent_mel)

    # -- the stages (each runs in its own thread, except hand_off) --------------------------------------------
    def decode(self, open_frames: Callable[[], Iterator[tuple[int, np.ndarray]]], out, budget, stop) -> None:
        from lipsync_cli.engine import END

        frames = open_frames()
        try:
            batch: list = []
            planned: set[int] = set()
            i = 0
            while True:
                budget.acquire(self.frame_bytes, stop)  # before decoding: the budget covers this frame too
                t, c = time.perf_counter(), time.thread_time()
                try:
                    src, frame = next(frames)
                except StopIteration:
                    budget.release(self.frame_bytes)
                    break
                self._busy("decode", t, c)
                self.stage_n["decode"] += 1
                faces = self.faces_of(src)
                if self.plan is not None and faces:
                    kept = [(box, v) for box, v in faces if self.plan.needs_face(v, i)]
                    if len(kept) < len(faces):
                        planned.add(i)
                    faces = kept
                batch.append((i, frame, faces))
                i += 1
                if len(batch) >= self.batch_frames:
                    out.put(_Batch(batch, planned_out=planned))
                    batch, planned = [], set()
            if batch:
                out.put(_Batch(batch, planned_out=planned))
            out.put(END)
        finally:
            frames.close()  # stops the decoder (ffmpeg, its thread, the spool) on every path, in this thread

    def prepare(self, b: _Batch) -> _Batch:
        t, c = time.perf_counter(), time.thread_time()
        b.idx = [(k, box, v) for k, (_, _, fs) in enumerate(b.items) for box, v in fs]
        if b.idx:
            # the faces the generator sees: each face's own crop and mel window, where the speech drives it, and
            # the reference crop of each pause that starts here, with the silent window (--silence hold)
            crops, mels, boxes = [], [], []
            for k, box, v in b.idx:
                i = b.items[k][0]
                crop = None
                if self.plan is None or self.plan.needs_speech(v, i):
                    crop = self.adapter.crop(b.items[k][1], box, i)
                    crops.append(crop)
                    mels.append(self.adapter.features(v, i))
                    boxes.append(box)
                if self.plan is not None and self.plan.needs_held(v, i):
                    key = (v, int(self.plan.pause[v, i]))
                    if key not in self.held_asked:  # the pause's first frame: its crop is the reference
                        self.held_asked.add(key)
                        b.held.append(key)
                        crops.append(crop if crop is not None else self.adapter.crop(b.items[k][1], box, i))
                        mels.append(self.adapter.silent)
                        boxes.append(box)
            # all crops are taken before any face of a frame is blended; one batch of tensors (the adapter's)
            b.crops = self.adapter.collate(crops, mels, boxes, self.blend_mode) if crops else None
        self._busy("prepare", t, c)
        self.stage_n["prepare"] += len(b.items)
        return b

    def generate(self, b: _Batch) -> _Batch:
        if b.crops is not None:
            t, c = time.perf_counter(), time.thread_time()
            b.mouths = self.adapter.generate(b.crops, self.gen)
            n = len(b.mouths)
            b.crops = None
            if b.held:  # the held mouths come last: kept for every frame of their pause
                for key, mouth in zip(b.held, b.mouths[n - len(b.held):]):
                    self.held_mouths[key] = mouth.copy()
                b.mouths = b.mouths[:n - len(b.held)]
            self._busy("generate", t, c)
            if self.cpu_meter is not None:
                self.cpu_meter.sample()
            self.stage_n["generate"] += n
        return b

    def blend(self, b: _Batch) -> _Batch:
        t, c = time.perf_counter(), time.thread_time()
        if b.idx and self.plan is None:
            for g, (k, box, _) in zip(b.mouths, b.idx):
                self.adapter.paste(b.items[k][1], g, box, self.blend_mode)
        elif b.idx:
            from lipsync_cli.silence import mix_mouths, mix_region

            made = iter(b.mouths) if b.mouths is not None else iter(())
            for k, box, v in b.idx:
                frame, i = b.items[k][1], b.items[k][0]
                w = float(self.plan.speech[v, i])
                speech = next(made) if w > 0 else None
                held = self.held_mouths[(v, int(self.plan.pause[v, i]))] if w < 1 else None
                alpha = float(self.plan.alpha[v, i])
                region = self.adapter.region(box, frame)  # the pixels the paste may change
                x1, y1, x2, y2 = region
                before = frame[y1:y2, x1:x2].copy() if alpha < 1 else None
                self.adapter.paste(frame, mix_mouths(speech, held, w), box, self.blend_mode)
                if before is not None:
                    mix_region(frame, before, region, alpha)
        b.mouths = None
        self._busy("blend", t, c)
        self.stage_n["blend"] += len(b.items)
        return b

    def enhance(self, b: _Batch) -> _Batch:
        if b.idx:
            t, c = time.perf_counter(), time.thread_time()
            self.enhancer.apply([b.items[k][1] for k, _, _ in b.idx], [box for _, box, _ in b.idx])
            self._busy("enhance", t, c)
            self.stage_n["enhance"] += len(b.idx)
        return b

    def hand_off(self, b: _Batch, out) -> None:
        """In the caller's thread, in output order: the no-face list, ``frame_sink``, progress, the encoder."""
        self.n_faces += len(b.idx)
        for i, frame, fs in b.items:
            if not fs and i not in b.planned_out:
                self.no_face.append(i)
            if self.frame_sink is not None:
                self.frame_sink(i, frame)
            out.put(frame)
        self.frames += len(b.items)
        if self.progress:
            if self.enhancer is not None:
                self.progress("enhance", len(b.items), self.n_out)
            self.progress("dub", len(b.items), self.n_out)

    def encode(self, writer, inbox, budget) -> None:
        from lipsync_cli.engine import END

        while (frame := inbox.get()) is not END:
            t, c = time.perf_counter(), time.thread_time()
            writer.write(frame)
            self._busy("encode", t, c)
            self.stage_n["encode"] += 1
            budget.release(self.frame_bytes)

    # -- wiring ----------------------------------------------------------------------------------------------
    def run(self, open_frames: Callable[[], Iterator[tuple[int, np.ndarray]]], writer) -> None:
        """Stream every frame of ``open_frames()`` through the stages into ``writer``; raises the first error of
        any stage (after stopping and joining them all)."""
        from lipsync_cli.engine import END, ByteBudget, Pipeline

        t0 = time.perf_counter()
        pipe = Pipeline()
        budget = ByteBudget(self.budget_bytes)
        q = QUEUE_BATCHES
        decoded, prepared = pipe.channel("decode>prepare", q), pipe.channel("prepare>generate", q)
        generated = pipe.channel("generate>blend", q)
        blended = pipe.channel("blend>enhance" if self.enhancer is not None else "blend>out", q)
        pipe.spawn("decode", lambda: self.decode(open_frames, decoded, budget, pipe.stop))
        pipe.map("prepare", self.prepare, decoded, prepared)
        pipe.map("generate", self.generate, prepared, generated)
        pipe.map("blend", self.blend, generated, blended)
        if self.enhancer is not None:
            enhanced = pipe.channel("enhance>out", q)
            pipe.map("enhance", self.enhance, blended, enhanced)
            blended = enhanced
        to_encoder = pipe.channel("out>encode", q * self.batch_frames, unit="frames")
        pipe.spawn("encode", lambda: self.encode(writer, to_encoder, budget))
        try:
            pipe.run(blended, lambda b: self.hand_off(b, to_encoder), on_end=lambda: to_encoder.put(END))
        finally:
            self.queue_stats = pipe.queue_stats()
            self.peak_bytes = budget.peak
            self.wall = time.perf_counter() - t0


def prepare_for_inference(model, device: str, precision: str = "fp32"):
    """Eval mode on ``device``, BatchNorm folded into the convolutions, channels-last memory (faster on CPU and
    tensor cores), and the weights cast once to ``precision`` (bf16/fp16: half the bytes, no autocast re-casting
    them on every call; fp32 unchanged). fp32 outputs equal the unfused model's to float rounding. On CUDA,
    cuDNN picks its fastest kernels for the (fixed) input shapes. A model this returned for the same device and
    precision is returned as it is: a batch worker prepares its generator once, not once per job (the fold copies
    the network, ~1.5 s for Wav2Lip on a 2-core CPU)."""
    import torch

    from lipsync_cli.device import amp_dtype
    from lipsync_cli.models.fuse import fuse_conv_bn

    if getattr(model, "_prepared_for", None) == (str(device), precision) or not isinstance(model, torch.nn.Module):
        return model  # not a module: MuseTalk, cast and placed when loaded (lipsync_cli.musetalk_dub)
    if device_type(device) == "cuda":
        torch.backends.cudnn.benchmark = True
    model = fuse_conv_bn(model.eval())
    dtype = amp_dtype(precision)
    if dtype is not None:
        model = model.to(dtype=dtype)
    model = model.to(device=device, memory_format=torch.channels_last)
    model._prepared_for = (str(device), precision)
    return model


def generate(model, mels, crops, device: str, precision: str, state: dict, first_row: int = 0) -> np.ndarray:
    """Run the generator on (B, 1, 80, 16) float32 mels and (B, 96, 96, 3) uint8 face crops (torch tensors, pinned
    for CUDA) -> the (B, 96, 96, 3) uint8 mouths, in micro-batches of ``state["batch"]``.

    ``first_row`` > 0 (a model with ``forward_rows``): only rows ``first_row:`` are generated, the ones the blend
    reads (``blend.first_row_read``), equal to the whole face's; the rows above are the crop's own pixels.

    On the device: the masking and scaling of ``blend.prepare_batch`` (``prepare_batch_tensor``), the model in
    ``precision`` (cast once by ``prepare_for_inference``), the rounding of ``blend.to_uint8``; only uint8
    crosses the bus, asynchronously on CUDA (pinned memory), with one synchronisation per call. On a device
    out-of-memory error (CUDA or MPS, see ``device.is_out_of_memory``) the micro-batch is halved in ``state``
    and the batch retried, so the smaller size sticks for the rest of the run; at 1 the error is raised."""
    import torch

    from lipsync_cli.device import amp_dtype, in_micro_batches

    dtype = amp_dtype(precision) or torch.float32
    cuda = device_type(device) == "cuda"
    out = torch.empty(tuple(crops.shape), dtype=torch.uint8, pin_memory=cuda)  # (B, 96, 96, 3)
    r = first_row if first_row > 0 and hasattr(model, "forward_rows") else 0
    if r:
        out[:, :r] = crops[:, :r]  # rows no blend reads: the face as it was

    def run(a: int, z: int) -> None:
        with torch.inference_mode():
            faces = blending.prepare_batch_tensor(crops[a:z].to(device, non_blocking=cuda))  # (b, 6, 96, 96)
            mel = mels[a:z].to(device, non_blocking=cuda).to(dtype)
            pred = model.forward_rows(mel, faces.to(dtype), r) if r else model(mel, faces.to(dtype))
            out[a:z, r:].copy_(blending.to_uint8_tensor(pred), non_blocking=cuda)  # into pinned memory

    in_micro_batches(run, len(crops), state, device)
    if cuda:
        torch.cuda.current_stream(device).synchronize()  # the non-blocking downloads have landed
    return out.numpy()
