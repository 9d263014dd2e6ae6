"""What runs one batch job, in whichever process the executor chose (this one, a local worker, a Ray actor).

A worker keeps what is expensive to make for every job that can use it: generators by (checkpoint, arch,
device), detectors by their options, and the probe of each video (by path, size and modification time). The
analysis of a video (its track: faces, cuts, and the embeddings or speaking scores its speakers need) comes from
the track cache (``lipsync_cli.tracks``), so each video is analysed once for all its languages and for every
rerun; each job then decodes it once, to render. A failure
of any kind but an interrupt becomes the job's one-line reason; it never stops the other jobs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lipsync_cli.batch.manifest import Job
from lipsync_cli.errors import InputNotFound, LipsyncError

log = logging.getLogger(__name__)

# Progress of a job: (stage, frames advanced, stage total or None), as dub's progress callback.
JobProgress = Callable[[str, int, "int | None"], None]

_models: dict[tuple, Any] = {}
_detectors: dict[tuple, Any] = {}
_probes: dict[tuple, Any] = {}
PROBES_KEPT = 256  # videos whose probe a worker keeps
stats = {"model_loads": 0, "detector_loads": 0, "detections": 0, "probes": 0}


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")


def thread_env(threads: int) -> dict[str, str]:
    """Environment that bounds the math libraries' thread pools to ``threads`` (set before torch is imported)."""
    return {k: str(threads) for k in THREAD_VARS}


def limit_threads(threads: int) -> None:
    """Bound torch's and OpenCV's thread pools in this process, so N workers do not oversubscribe the cores."""
    import cv2
    import torch

    torch.set_num_threads(max(1, threads))
    cv2.setNumThreads(max(1, threads))


def _generator(options, device: str):
    from lipsync_cli.device import resolve_precision
    from lipsync_cli.dub import load_dub_generator
    from lipsync_cli.render import prepare_for_inference

    precision = resolve_precision(options.precision, device)
    key = (str(options.checkpoint), options.arch, device, precision)
    if key not in _models:  # kept prepared (folded, channels-last, cast): dub uses it as it is, job after job
        _models[key] = prepare_for_inference(load_dub_generator(options, device), device, precision)
        stats["model_loads"] += 1
    return _models[key]


def _detector(options, device: str):
    from lipsync_cli.dub import detection_size, load_dub_detector

    key = (options.detector, str(options.detector_weights), device, detection_size(options, device))
    if key not in _detectors:
        _detectors[key] = load_dub_detector(options, device)
        stats["detector_loads"] += 1
    return _detectors[key]


def _probe(video: Path):
    """The probe of ``video``, made once per worker for all the jobs of that file (as long as it is unchanged)."""
    from lipsync_cli.media.probe import probe

    st = video.stat()
    key = (str(video.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _probes:
        if len(_probes) >= PROBES_KEPT:
            _probes.pop(next(iter(_probes)))
        _probes[key] = probe(video)
        stats["probes"] += 1
    return _probes[key]


def _check_visible(job: Job) -> None:
    """Inputs are read where the job runs: on a cluster node that does not see the path, say so plainly."""
    for what, path in (("video", job.video), ("audio", job.audio)):
        if not path.exists():
            where = f" on node {socket.gethostname()}" if os.environ.get("LIPSYNC_BATCH_REMOTE") else ""
            hint = ("every node must see the inputs at the same path (a shared filesystem)" if where else None)
            raise InputNotFound(f"{what} file not found{where}: {path}", hint)


def run_job(job: Job, cache_dir: str | Path | None, progress: JobProgress | None = None) -> dict[str, Any]:
    """Dub one job; returns its outcome: ``state`` done/failed, ``error`` (one line), ``frames``, ``wall_s``,
    ``track`` (box / track / detected / cached / none), ``host``, ``pid``. KeyboardInterrupt propagates (dub
    removes its temporary output first)."""
    from lipsync_cli.device import resolve_device
    from lipsync_cli.dub import dub

    t0 = time.perf_counter()
    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        _check_visible(job)
        options = job.options
        device = resolve_device(options.device)
        track = "box" if options.box is not None else "track" if options.track is not None else None
        info = _probe(job.video)
        if track is None and cache_dir is not None:
            from lipsync_cli.tracks import cached_track

            path, detected = cached_track(job.video, options, cache_dir, device=device,
                                          get_detector=lambda: _detector(options, device), progress=progress,
                                          info=info)
            track = "detected" if detected else "cached"
            stats["detections"] += int(detected)
            options = dataclasses.replace(options, track=path)
        model = _generator(options, device)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        result = dub(job.video, job.audio, job.output, options, progress=progress, model=model, info=info)
        out.update(state="done", frames=result.frames, fps=result.fps, faces=result.faces,
                   no_face_frames=len(result.no_face_frames), device=result.device, track=track or "detected",
                   output_size=job.output.stat().st_size)
    except LipsyncError as err:
        out.update(state="failed", error=str(err))
    except MemoryError:
        out.update(state="failed", error="out of memory")
    except Exception as err:  # noqa: BLE001 - a bug or an odd input fails this job, never the batch
        from lipsync_cli.device import is_out_of_memory

        msg = "out of device memory" if is_out_of_memory(err) else f"{type(err).__name__}: {err}"
        out.update(state="failed", error=msg.splitlines()[0] if msg else type(err).__name__)
        log.debug("job %s failed", job.id, exc_info=True)
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    return out
