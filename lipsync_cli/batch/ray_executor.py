"""The Ray executor: batch jobs as calls on Ray actors, each actor holding its generator for all its jobs.

One actor per GPU of the cluster (``gpus_per_job`` each) or, on CPU clusters, one per ``cpus_per_job`` cores;
never more actors than jobs. Ray sets each actor's ``CUDA_VISIBLE_DEVICES`` and ``OMP_NUM_THREADS``. Jobs read
and write the paths the driver resolved, so every node must see them at the same place (a shared filesystem); a
node that cannot see an input fails that job with a message saying so. The journal, the report and the exit
code stay with the driver.

Ray is an optional extra: ``pip install 'lipsync-cli[ray]'`` (``uv sync --extra ray``).

The workers run in the Python environment the node's Ray was started from (``ray start`` on that node, or this
process's interpreter for a local instance), with the same package installed: we give Ray no ``runtime_env``.
Ray's own ``uv run`` hook is turned off (``RAY_ENABLE_UV_RUN_RUNTIME_ENV=0`` unless the user set it): under
``uv run`` it would copy the current folder to every node and have each worker run ``uv run`` there, which
builds a fresh virtual environment (torch included, gigabytes) before the first job; on a 2-core machine the
workers missed Ray's 60 s registration timeout and every job failed with ``ActorUnschedulableError``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from lipsync_cli.batch.executors import Executor, Outcome, ProgressSink
from lipsync_cli.batch.manifest import Job
from lipsync_cli.errors import BadOption, LipsyncError

log = logging.getLogger(__name__)

INSTALL_HINT = "install the extra: pip install 'lipsync-cli[ray]' (or: uv sync --extra ray)"


UV_HOOK_VAR = "RAY_ENABLE_UV_RUN_RUNTIME_ENV"


def import_ray():
    """The ``ray`` module, with its ``uv run`` runtime-env hook off (see the module doc), or a one-line
    LipsyncError saying how to install it."""
    os.environ.setdefault(UV_HOOK_VAR, "0")  # read by Ray when it is first imported...
    try:
        import ray
    except ImportError:
        raise LipsyncError("--ray needs Ray, which is not installed", INSTALL_HINT) from None
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ[UV_HOOK_VAR].strip().lower() not in ("1", "true"):  # as Ray reads it
        constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False  # ...or read at ray.init() when it was imported before
    return ray


class _JobActor:
    """Runs jobs in its own process, keeping generators and detectors loaded (``batch.worker``'s caches)."""

    def __init__(self, cache_dir: str | None):
        import os

        os.environ["LIPSYNC_BATCH_REMOTE"] = "1"  # missing inputs are reported as "not visible on node ..."
        self.cache_dir = cache_dir

    def run(self, job: Job) -> Outcome:
        from lipsync_cli.batch.worker import run_job

        return run_job(job, self.cache_dir, None)


class RayExecutor(Executor):
    """Jobs on the Ray cluster at ``address`` ('auto': the one this machine belongs to; None: the Ray instance
    already initialised in this process, or a new local one)."""

    name = "ray"

    def __init__(self, address: str | None = "auto", *, gpus_per_job: float = 0.0, cpus_per_job: float = 1.0,
                 max_actors: int | None = None):
        if gpus_per_job < 0 or cpus_per_job <= 0:
            raise BadOption("--ray-gpus-per-job must be >= 0 and --ray-cpus-per-job > 0")
        self.ray = import_ray()
        self.address = address
        self.gpus_per_job, self.cpus_per_job = gpus_per_job, cpus_per_job
        self.max_actors = max_actors
        self._we_started = False
        self._actors: list = []
        self._idle: list = []
        self._refs: dict = {}  # ObjectRef -> (job, actor)
        self.slots = 1

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise LipsyncError(f"cannot connect to the Ray cluster at {self.address}: {str(err).splitlines()[0]}",
                               "start one with `ray start --head` (and `ray start --address HEAD:6379` on the "
                               "other nodes), or give its address to --ray") from None
        self._we_started = True

    def start(self, cache_dir: Path | None, progress: ProgressSink | None) -> None:
        super().start(cache_dir, progress)
        self._connect()
        ray = self.ray
        res = ray.cluster_resources()
        if self.gpus_per_job > 0:
            n = int(res.get("GPU", 0) // self.gpus_per_job)
            if n < 1:
                raise BadOption(f"the Ray cluster has {res.get('GPU', 0):g} GPU(s): not enough for "
                                f"--ray-gpus-per-job {self.gpus_per_job:g}", "use --ray-gpus-per-job 0 on CPUs")
        else:
            n = int(res.get("CPU", 1) // self.cpus_per_job)
        n = max(1, min(n, self.max_actors or n))
        actor_cls = ray.remote(_JobActor).options(num_cpus=self.cpus_per_job, num_gpus=self.gpus_per_job,
                                                  max_concurrency=1)
        self._actors = [actor_cls.remote(str(cache_dir) if cache_dir else None) for _ in range(n)]
        self._idle = list(self._actors)
        self.slots = n

    def submit(self, job: Job) -> None:
        actor = self._idle.pop()
        self._refs[actor.run.remote(job)] = (job, actor)

    def wait(self, timeout: float) -> list[tuple[str, Outcome]]:
        ray = self.ray
        if not self._refs:
            time.sleep(min(timeout, 0.05))
            return []
        ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            job, actor = self._refs.pop(ref)
            self._idle.append(actor)
            try:
                outcome = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - an actor that died (node lost, OOM-killed) fails its job
                msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                outcome = {"state": "failed", "error": f"Ray task failed: {type(err).__name__}: {msg}",
                           "wall_s": None}
            done.append((job.id, outcome))
        return done

    def stop(self) -> None:
        """Cancel the running calls (KeyboardInterrupt in the actor: dub removes its temporary output), then
        end the actors."""
        ray = self.ray
        for ref in list(self._refs):
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - already finished
                pass
        if self._refs:
            ray.wait(list(self._refs), num_returns=len(self._refs), timeout=10)
        self._refs = {}
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001
                pass
        self._actors, self._idle = [], []
        if self._we_started:
            ray.shutdown()
            self._we_started = False
