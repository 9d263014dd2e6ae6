"""The machinery of the dub engine: stages in threads joined by bounded queues, frames in flight bounded in bytes.

``lipsync_cli.dub`` builds its pipeline from these parts::

    decode -> [2 batches] -> prepare -> [2] -> generate -> [2] -> blend -> [2] -> hand-off -> [frames] -> encode
      (thread)              (thread)         (thread)          (thread)      (caller's thread)       (thread)

Every stage works while the others do; a ``Channel`` between two stages holds at most its capacity of items and
measures how full it was (time-weighted); with each stage's busy time, ``lipsync dub --stats`` shows which stage
limits the run. One ``ByteBudget`` counts the bytes of the frames from the moment they are decoded until
the encoder has written them, so memory does not depend on the queue sizes or the frame size.

An exception in any stage stops every stage (they all wait with timeouts and look at one stop event) and is
re-raised in the caller's thread by ``Pipeline.run``; so is a KeyboardInterrupt in the caller's thread, after
the threads have been stopped and joined.
"""

from __future__ import annotations

import os
import queue
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lipsync_cli.device import cpu_count

POLL_S = 0.05  # how often a waiting stage looks at the stop event


class Stopped(Exception):
    """Raised inside a stage when the pipeline is stopping (another stage failed, or the caller gave up)."""


class _End:
    def __repr__(self) -> str:
        return "END"


END = _End()  # the last item of a channel: the stage before it has finished


class ByteBudget:
    """Bytes held in flight, at most ``limit``: ``acquire`` blocks until there is room (or the pipeline stops).

    A single item larger than the whole budget is let through when nothing else is held, so a tiny budget
    degrades to one frame at a time instead of a deadlock. ``peak`` is the most bytes ever held at once."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"a byte budget must be > 0, got {limit}")
        self.limit = int(limit)
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, stop: threading.Event) -> None:
        with self._cond:
            while self.used > 0 and self.used + n > self.limit:
                if stop.is_set():
                    raise Stopped
                self._cond.wait(POLL_S)
            self.used += n
            self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


@dataclass
class QueueStats:
    """How full a channel was: time-weighted mean and maximum number of items, out of ``capacity``."""

    capacity: int
    mean: float
    max: int
    unit: str = "batches"

    def as_dict(self) -> dict:
        return {"capacity": self.capacity, "mean": round(self.mean, 3), "max": self.max, "unit": self.unit}


class Channel:
    """A bounded FIFO between two stages whose ``put``/``get`` give up when the pipeline stops.

    Occupancy is integrated over time on every change, so ``stats()`` is the time-weighted mean, not a sample."""

    def __init__(self, name: str, capacity: int, stop: threading.Event, unit: str = "batches"):
        self.name = name
        self.capacity = max(1, int(capacity))
        self.unit = unit
        self._q: queue.Queue = queue.Queue(maxsize=self.capacity)
        self._stop = stop
        self._lock = threading.Lock()
        self._t0 = self._t = time.perf_counter()
        self._level = 0
        self._area = 0.0
        self._max = 0

    def _note(self, delta: int) -> None:
        with self._lock:
            now = time.perf_counter()
            self._area += self._level * (now - self._t)
            self._t = now
            self._level += delta
            self._max = max(self._max, self._level)

    def put(self, item) -> None:
        """Append ``item``, waiting while the channel is full; ``Stopped`` when the pipeline stops first."""
        while True:
            if self._stop.is_set():
                raise Stopped
            try:
                self._q.put(item, timeout=POLL_S)
            except queue.Full:
                continue
            if item is not END:
                self._note(+1)
            return

    def get(self):
        """The next item (``END`` after the last), waiting while empty; ``Stopped`` when the pipeline stops."""
        while True:
            if self._stop.is_set():
                raise Stopped
            try:
                item = self._q.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if item is not END:
                self._note(-1)
            return item

    def stats(self) -> QueueStats:
        self._note(0)
        with self._lock:
            span = self._t - self._t0
            mean = self._area / span if span > 0 else 0.0
            return QueueStats(self.capacity, mean, self._max, self.unit)


class Pipeline:
    """Threads that run stages, channels between them, one stop event, the first error.

    ``spawn`` starts a thread; ``map`` starts one that applies a function to every item of a channel (the
    function measures its own busy time); ``run`` consumes the last channel in the caller's thread and, on every path,
    stops and joins the threads. Thread names start with ``lipsync-``."""

    def __init__(self):
        self.stop = threading.Event()
        self.channels: dict[str, Channel] = {}
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def channel(self, name: str, capacity: int, unit: str = "batches") -> Channel:
        ch = Channel(name, capacity, self.stop, unit)
        self.channels[name] = ch
        return ch

    def _fail(self, err: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = err
        self.stop.set()

    def spawn(self, name: str, target: Callable[[], None], on_exit: Callable[[], None] | None = None) -> None:
        """Run ``target()`` in a thread; an exception there stops the pipeline and is re-raised by ``run``.
        ``on_exit`` runs in the thread on every path (closing what the stage opened)."""

        def body() -> None:
            try:
                target()
            except Stopped:
                pass
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                self._fail(err)
            finally:
                if on_exit is not None:
                    try:
                        on_exit()
                    except BaseException as err:  # noqa: BLE001
                        self._fail(err)

        t = threading.Thread(target=body, name=f"lipsync-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    def map(self, name: str, fn: Callable, inbox: Channel, outbox: Channel) -> None:
        """A stage: ``outbox.put(fn(item))`` for every item of ``inbox``, then ``END``."""

        def loop() -> None:
            while (item := inbox.get()) is not END:
                outbox.put(fn(item))
            outbox.put(END)

        self.spawn(name, loop)

    def run(self, inbox: Channel, consume: Callable, on_end: Callable[[], None] | None = None) -> None:
        """Call ``consume(item)`` in this thread for every item of ``inbox`` until ``END``, then ``on_end()`` (e.g.
        ``END`` to the stages after this one), then wait for the other stages to finish. Whatever goes wrong, in
        a stage or here (KeyboardInterrupt included), every thread is stopped and joined before this returns or
        raises; a stage's error is raised here."""
        try:
            while (item := inbox.get()) is not END:
                consume(item)
            if on_end is not None:
                on_end()
            for t in self._threads:  # the stages after this one (the encoder) drain what they were given
                while t.is_alive():
                    t.join(POLL_S)
                    if self.stop.is_set():
                        break
        except Stopped:
            pass
        finally:
            self.close()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop every stage and wait for its thread (stages wait in steps of ``POLL_S``, so this is prompt)."""
        self.stop.set()
        for t in self._threads:
            while t.is_alive():
                t.join(POLL_S)

    def queue_stats(self) -> dict[str, dict]:
        return {name: ch.stats().as_dict() for name, ch in self.channels.items()}


# ---------------------------------------------------------------------------------------------------------------
# CPU seconds: whether the stages pack onto the cores (a stage's busy time counts its waits for a core too)


def _native_threads_cpu() -> dict[int, float]:
    """CPU seconds of each thread of this process that Python did not start (torch's intra-op pool, oneDNN),
    from /proc; {} where there is none."""
    py = {t.native_id for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[int, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        if int(tid) in py:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


@dataclass
class CpuUse:
    """CPU seconds of one streaming run: ``stages`` each stage's own thread while busy (``time.thread_time``);
    ``workers`` the threads Python did not start (torch's intra-op pool: the generator's helpers); ``process``
    every thread of this process; ``children`` the processes that ended meanwhile (ffmpeg's decoder and encoder),
    all over the same ``wall`` seconds, on ``cores`` cores."""

    stages: dict[str, float] = field(default_factory=dict)
    workers: float = 0.0
    process: float = 0.0
    children: float = 0.0
    cores: int = 1
    wall: float = 0.0

    @property
    def total(self) -> float:
        return self.process + self.children

    def as_dict(self) -> dict:
        return {"stages": {k: round(v, 3) for k, v in self.stages.items()}, "workers": round(self.workers, 3),
                "process": round(self.process, 3), "children": round(self.children, 3), "cores": self.cores,
                "wall": round(self.wall, 3)}


class CpuMeter:
    """``start()`` then ``stop(stage_cpu)`` -> :class:`CpuUse` of what ran in between (this process, its native
    threads and its finished child processes; per-thread figures on Linux only).

    OpenMP gives each thread that opens a parallel region its own team, which ends with that thread: the stage
    that runs torch calls ``sample()`` after each batch, so its workers' CPU is seen before they go."""

    def start(self) -> CpuMeter:
        self._t = time.perf_counter()
        self._self = resource.getrusage(resource.RUSAGE_SELF)
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._native = _native_threads_cpu()
        self._seen: dict[int, float] = {}
        return self

    def sample(self) -> None:
        """Note the native threads' CPU seconds now (cheap: one /proc read per thread)."""
        for tid, s in _native_threads_cpu().items():
            self._seen[tid] = max(s, self._seen.get(tid, 0.0))

    def stop(self, stages: dict[str, float]) -> CpuUse:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        self.sample()
        workers = sum(max(0.0, s - self._native.get(tid, 0.0)) for tid, s in self._seen.items())
        return CpuUse(stages=dict(stages), workers=workers,
                      process=me.ru_utime + me.ru_stime - self._self.ru_utime - self._self.ru_stime,
                      children=kids.ru_utime + kids.ru_stime - self._children.ru_utime - self._children.ru_stime,
                      cores=cpu_count(), wall=time.perf_counter() - self._t)


def format_cpu(cpu: CpuUse, stage_frames: dict[str, int], frames: int, worker_stage: str = "generate",
               face_stages: tuple[str, ...] = ("generate", "enhance"),
               child_name: str = "ffmpeg decode + encode") -> list[str]:
    """The CPU lines of ``--stats``: each stage's CPU seconds and milliseconds per item (``worker_stage`` with
    the native worker threads, which only it uses), the rest of the process, the child processes, the total per
    frame, and the packing figure: the wall time of the measured span (streaming, the encoder's flush included)
    against the CPU seconds spread over the cores (1.00x: every core busy throughout; more: cores idle, or lent
    to other processes)."""
    n = max(1, frames)
    lines = [f"CPU seconds, streaming ({cpu.wall:.2f} s, encoder's flush included):"]
    counted = 0.0
    for name, s in cpu.stages.items():
        items = stage_frames.get(name, 0)
        if not items:
            continue
        unit = "face" if name in face_stages else "frame"
        extra = ""
        if name == worker_stage and cpu.workers > 0:
            extra = f"  ({s:.2f} its thread + {cpu.workers:.2f} native threads: torch's pool)"
            s += cpu.workers
        counted += s
        lines.append(f"  {name:9s} {s:7.2f} s {1000 * s / items:7.1f} ms/{unit}{extra}")
    other = max(0.0, cpu.process - counted)
    lines.append(f"  {'other':9s} {other:7.2f} s {1000 * other / n:7.1f} ms/frame  (hand-off, readers, queues)")
    lines.append(f"  {'ffmpeg':9s} {cpu.children:7.2f} s {1000 * cpu.children / n:7.1f} ms/frame  ({child_name})")
    packed = cpu.total / cpu.cores
    ratio = f" = {cpu.wall / packed:.2f}x" if packed > 0 else ""
    lines.append(f"  total     {cpu.total:7.2f} s {1000 * cpu.total / n:7.1f} ms/frame; packed on {cpu.cores} "
                 f"core{'s' if cpu.cores != 1 else ''}: {packed:.2f} s, wall {cpu.wall:.2f} s{ratio}")
    return lines


MIN_TIMED_S = 0.01  # busy times below this are mostly timer and thread noise: no rate is computed from them


def format_rate(items: int, seconds: float) -> str:
    """Items per second, '12.3'; for a busy time under ``MIN_TIMED_S`` only the bound it proves, '>7500' (75
    items in under 10 ms), never the noise of dividing by almost nothing."""
    if seconds >= MIN_TIMED_S:
        return f"{items / seconds:.1f}"
    return f">{items / MIN_TIMED_S:.0f}"


def format_stats(stage_seconds: dict[str, float], stage_frames: dict[str, int], stream_seconds: float,
                 queue_stats: dict[str, dict], pending_bytes: tuple[int, int] = (0, 0),
                 face_stages: tuple[str, ...] = ("generate", "enhance")) -> list[str]:
    """The lines of ``lipsync dub --stats``: each stage's busy time (seconds, share of the streaming time, items,
    items/s; the busiest stage is the one that limits the run), each queue's mean and maximum occupancy, and the
    peak of the frames in flight against their budget. Stages without items are left out (``detect`` with
    ``--box``); ``detect`` ran before streaming, so its share is not of the same time."""
    rows = [(k, s, stage_frames.get(k, 0)) for k, s in stage_seconds.items() if stage_frames.get(k, 0)]
    streamed = [r for r in rows if r[0] != "detect"]
    limit = max(streamed, key=lambda r: r[1])[0] if streamed else None
    wall = max(stream_seconds, 1e-9)
    lines = [f"stages, busy time ({stream_seconds:.2f} s streaming; each stage in its own thread):"]
    for name, s, n in rows:
        unit = "faces" if name in face_stages else "frames"
        share = "  before" if name == "detect" else f"{100 * s / wall:5.0f}%"
        rate = f"{format_rate(n, s):>8s} {unit}/s"
        mark = "  <- limits the run" if name == limit else ""
        lines.append(f"  {name:9s} {s:7.2f} s {share} {n:7d} {unit:6s}{rate}{mark}")
    if queue_stats:
        lines.append("queues, items waiting (time-weighted mean / max / capacity):")
        for name, q in queue_stats.items():
            lines.append(f"  {name:17s} {q['mean']:6.2f} / {q['max']:3d} / {q['capacity']:3d} {q['unit']}")
    peak, budget = pending_bytes
    if budget:
        lines.append(f"frames in flight: peak {peak / 2**20:.0f} MiB of a {budget / 2**20:.0f} MiB budget")
    return lines
