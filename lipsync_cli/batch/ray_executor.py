"""The Ray executor: batch jobs as calls on Ray actors, each actor holding its generator for all its jobs.

One actor per GPU of the cluster (``gpus_per_job`` each) or, on CPU clusters, one per ``cpus_per_job`` cores;
never more actors than jobs. Ray sets each actor's ``CUDA_VISIBLE_DEVICES`` and ``OMP_NUM_THREADS``. Jobs read
and write the paths the driver resolved, so every node must see them at the same place (a shared filesystem); a
node that cannot see an input fails that job with a message saying so. The journal, the report and the exit
code stay with the driver.

Ray is an optional extra: ``pip install 'lipsync-cli[ray]'`` (``uv sync --extra ray``).

Where the jobs run (``--ray``): ``auto``, the running Ray instance this machine belongs to (Ray's meaning:
``RAY_ADDRESS``, else the cluster ``ray start`` started here; an error when none runs); ``HOST:PORT``, that
cluster; ``local``, a private instance started for this run on this machine's CPUs and GPUs and stopped after it
(also on an error or Ctrl-C). The private instance gets a token of its own (``RAY_AUTH_MODE=token`` with a random
``RAY_AUTH_TOKEN``, unless the user set Ray's auth variables): nobody else on the network can submit work to it,
nothing is written to ``~/.ray``, and Ray does not print its token-authentication warning.

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
LOCAL = "local"  # --ray local: a private instance for the run

UV_HOOK_VAR = "RAY_ENABLE_UV_RUN_RUNTIME_ENV"
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# Ray's notice when it turns token auth on by itself (a token in ~/.ray): a fact about the cluster we join, not
# something the user of `lipsync batch` acts on. Only this message of this logger is dropped.
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"
QUIET = logging.WARNING  # Ray's driver-side log level: its warnings, not its "Started a local Ray instance."


class _DropAuthNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_AUTH_NOTICE)


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
        """Run ``job``; a ``ray.cancel`` of this call (the driver was stopped) interrupts it at its next progress
        step, as Ctrl-C would: Ray only flags a running call of a (non-async) actor as cancelled, and killing the
        actor instead would leave dub's temporary output behind."""
        import ray

        from lipsync_cli.batch.worker import run_job

        # newer Ray; with an older one a running job is not interrupted (stop() ends the actor after 10 s)
        is_canceled = getattr(ray.get_runtime_context(), "is_canceled", None)

        def check(stage: str, advanced: int, total: int | None) -> None:
            if is_canceled is not None and is_canceled():
                raise KeyboardInterrupt

        try:
            return run_job(job, self.cache_dir, check)
        except KeyboardInterrupt:  # dub removed its temporary output; the driver puts the job back to pending
            return {"state": "pending", "error": "interrupted", "wall_s": None}


def _set_ray_auth(env: dict[str, str | None]) -> None:
    """Set (or, for None, remove) Ray's auth variables and have this process's Ray read them again (as Ray does
    itself when it turns token auth on: its config and its token are read once and cached)."""
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token auth: the variables mean nothing to it
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


class RayExecutor(Executor):
    """Jobs on Ray: ``address`` 'auto' (the running instance this machine belongs to), 'local' (a private instance
    for the run, stopped after it), HOST:PORT (that cluster), or None (the instance already initialised in this
    process with ``ray.init``, else as 'local')."""

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
        self._auth_before: dict[str, str | None] | None = None  # the auth variables before --ray local set them
        self._actors: list = []
        self._idle: list = []
        self._refs: dict = {}  # ObjectRef -> (job, actor)
        self.slots = 1

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        if self.address in (None, LOCAL):
            self._start_local()
            return
        notice = _DropAuthNotice()
        logging.getLogger(_AUTH_LOGGER).addFilter(notice)
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level=QUIET)
        except ray.exceptions.AuthenticationError as err:
            raise LipsyncError(f"the Ray cluster at {self.address} refused this machine's token: "
                               f"{str(err).splitlines()[0]}",
                               "give this process the cluster's token (RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or "
                               "RAY_AUTH_TOKEN_PATH, as on the nodes)") from None
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise LipsyncError(f"cannot connect to the Ray cluster at {self.address}: {str(err).splitlines()[0]}",
                               "start one with `ray start --head` (and `ray start --address HEAD:6379` on the "
                               "other nodes), give its address to --ray, or use --ray local for a private "
                               "instance on this machine") from None
        finally:
            logging.getLogger(_AUTH_LOGGER).removeFilter(notice)
        self._we_started = True

    def _start_local(self) -> None:
        """A new Ray instance on this machine, whatever RAY_ADDRESS or a running cluster say (``address="local"``),
        with a token of its own unless the user configured Ray's auth."""
        import secrets

        ray = self.ray
        if not any(os.environ.get(k) for k in AUTH_VARS):
            self._auth_before = {k: os.environ.get(k) for k in AUTH_VARS}
            _set_ray_auth({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
        self._we_started = True  # from here on stop() shuts it down, also when ray.init is interrupted
        try:
            ray.init(address=LOCAL, include_dashboard=False, log_to_driver=False, logging_level=QUIET)
        except (ConnectionError, RuntimeError, ValueError) as err:
            self.stop()
            raise LipsyncError(f"cannot start a local Ray instance: {str(err).splitlines()[0]}") from None
        except BaseException:
            self.stop()
            raise

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
        """Cancel the running calls (the actor interrupts its job at the next progress step: dub removes its
        temporary output), wait for them (10 s at most), then end the actors and an instance we started."""
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
        if self._auth_before is not None:
            _set_ray_auth(self._auth_before)
            self._auth_before = None
