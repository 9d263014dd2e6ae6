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

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

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
