"""Where batch jobs run, behind one small interface: this process, local worker processes, or a Ray cluster.

The driver (``run_batch``) owns the journal and the order of the jobs; an executor only runs them. It offers
``slots`` jobs at once: the driver submits at most that many, so a submitted job is a running job, and an
interrupt knows exactly which jobs to put back to pending. ``stop()`` interrupts the running jobs so they leave
no partial output (dub writes to a temporary name and removes it on KeyboardInterrupt).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lipsync_cli.batch.manifest import Job
from lipsync_cli.device import cpu_count

log = logging.getLogger(__name__)

# (job id, stage, frames advanced, stage total or None)
ProgressSink = Callable[[str, str, int, "int | None"], None]
Outcome = dict[str, Any]


class Executor:
    """The interface: ``start``, then ``submit`` up to ``slots`` jobs and collect them with ``wait``; ``stop``."""

    slots: int = 1
    name: str = "executor"

    def start(self, cache_dir: Path | None, progress: ProgressSink | None) -> None:
        self.cache_dir, self.progress = cache_dir, progress

    def submit(self, job: Job) -> None:
        raise NotImplementedError

    def wait(self, timeout: float) -> list[tuple[str, Outcome]]:
        """Finished jobs (id, outcome), waiting up to ``timeout`` s for at least one."""
        raise NotImplementedError

    def stop(self) -> None:
        """Interrupt the running jobs (no partial output) and release the workers."""

    def close(self) -> None:
        """Release the workers after a normal end."""
        self.stop()


def visible_gpus() -> list[str]:
    """The CUDA device ids this process may hand out: those of CUDA_VISIBLE_DEVICES when set, else every GPU
    torch sees; none on a machine without CUDA."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 - no usable CUDA is no GPU
        return []


def default_workers() -> int:
    """One worker per GPU, or 1 on a CPU."""
    return max(1, len(visible_gpus()))


class InlineExecutor(Executor):
    """Runs each job in this process, one at a time: no start-up cost, the generator stays loaded here."""

    name = "inline"

    def __init__(self):
        self._queued: list[Job] = []

    def submit(self, job: Job) -> None:
        self._queued.append(job)

    def wait(self, timeout: float) -> list[tuple[str, Outcome]]:
        from lipsync_cli.batch.worker import run_job

        done = []
        while self._queued:
            job = self._queued.pop(0)
            cb = (lambda stage, adv, total, _id=job.id, _sink=self.progress: _sink(_id, stage, adv, total)
                  ) if self.progress else None
            done.append((job.id, run_job(job, self.cache_dir, cb)))
        return done


# ---------------------------------------------------------------------------------------------------------------
# local worker processes


def _worker_main(index: int, env: dict[str, str], threads: int, cache_dir: str | None, inbox, outbox) -> None:
    """A worker process: bounded threads, its own GPU, jobs from ``inbox`` until None. SIGTERM interrupts the
    running job like Ctrl-C (its temporary output is removed); SIGINT is left to the driver, which stops us."""
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    job = None
    try:
        from lipsync_cli.batch.worker import limit_threads, run_job

        limit_threads(threads)
        outbox.put(("ready", index, None, None))
        while True:
            job = inbox.get()
            if job is None:
                return
            cb = lambda stage, adv, total, _id=job.id: outbox.put(("progress", index, _id, (stage, adv, total)))
            outcome = run_job(job, cache_dir, cb)
            outbox.put(("done", index, job.id, outcome))
            job = None
    except KeyboardInterrupt:
        outbox.put(("interrupted", index, job.id if job is not None else None, None))


class LocalExecutor(Executor):
    """``workers`` processes on this machine (spawned: a clean CUDA state each), each holding its models.

    Each worker sees one GPU (``CUDA_VISIBLE_DEVICES``, round-robin over ``gpus``) and ``threads`` math threads
    (default: the cores divided among the workers), so N workers do not oversubscribe the machine."""

    name = "local"

    def __init__(self, workers: int, *, gpus: list[str] | None = None, threads: int | None = None):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.slots = workers
        self.gpus = visible_gpus() if gpus is None else list(gpus)
        self.threads = threads or max(1, cpu_count() // workers)
        self._procs: list = []
        self._inboxes: list = []
        self._running: dict[int, Job] = {}

    def _env(self, index: int) -> dict[str, str]:
        from lipsync_cli.batch.worker import thread_env

        env = thread_env(self.threads)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[index % len(self.gpus)]
        return env

    def _spawn(self, index: int) -> None:
        inbox = self._ctx.Queue()
        proc = self._ctx.Process(target=_worker_main, name=f"lipsync-batch-{index}", daemon=True,
                                 args=(index, self._env(index), self.threads,
                                       str(self.cache_dir) if self.cache_dir else None, inbox, self._outbox))
        proc.start()
        if index < len(self._procs):
            self._procs[index], self._inboxes[index] = proc, inbox
        else:
            self._procs.append(proc)
            self._inboxes.append(inbox)

    def start(self, cache_dir: Path | None, progress: ProgressSink | None) -> None:
        super().start(cache_dir, progress)
        self._ctx = mp.get_context("spawn")
        self._outbox = self._ctx.Queue()
        for k in range(self.slots):
            self._spawn(k)

    def submit(self, job: Job) -> None:
        idle = next(k for k in range(self.slots) if k not in self._running)
        self._running[idle] = job
        self._inboxes[idle].put(job)

    def wait(self, timeout: float) -> list[tuple[str, Outcome]]:
        done: list[tuple[str, Outcome]] = []
        deadline = time.monotonic() + timeout
        while not done:
            try:
                kind, index, job_id, data = self._outbox.get(timeout=max(0.01, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                self._reap(done)
                if time.monotonic() >= deadline:
                    break
                continue
            if kind == "progress" and self.progress:
                self.progress(job_id, *data)
            elif kind == "done":
                self._running.pop(index, None)
                done.append((job_id, data))
        return done

    def _reap(self, done: list) -> None:
        """A worker that died with a job (killed for memory, a crash in native code) fails that job alone."""
        for index, job in list(self._running.items()):
            proc = self._procs[index]
            if proc.is_alive():
                continue
            code = proc.exitcode
            why = "killed (out of memory?)" if code in (-9, 137) else f"exit code {code}"
            done.append((job.id, {"state": "failed", "error": f"worker process died: {why}", "wall_s": None}))
            del self._running[index]
            self._spawn(index)

    def stop(self) -> None:
        """SIGTERM every worker (a running job removes its temporary output), then wait, then kill."""
        for proc in self._procs:
            if proc.is_alive():
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + 10
        for proc in self._procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1)
        self._procs, self._running = [], {}

    def close(self) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        for proc in self._procs:
            proc.join(10)
        self.stop()
