"""Many dubs from one manifest: validated up front, work done once, resumable, in parallel, on Ray.

``run_batch(manifest, BatchOptions(outdir=...), executor)`` is the library entry point; ``lipsync batch`` only
parses its options and calls it. Executors: ``InlineExecutor`` (this process), ``LocalExecutor(workers)``
(processes, one GPU each), ``RayExecutor(address)`` (``lipsync_cli.batch.ray_executor``, the ``ray`` extra).
"""

from lipsync_cli.batch.executors import Executor, InlineExecutor, LocalExecutor, default_workers
from lipsync_cli.batch.manifest import Job, Manifest, ManifestError, load_manifest
from lipsync_cli.batch.run import (
    BatchOptions,
    BatchPlan,
    BatchReport,
    PlannedJob,
    merge_reports,
    parse_shard,
    plan_batch,
    run_batch,
)

__all__ = [
    "BatchOptions",
    "BatchPlan",
    "BatchReport",
    "Executor",
    "InlineExecutor",
    "Job",
    "LocalExecutor",
    "Manifest",
    "ManifestError",
    "default_workers",
    "load_manifest",
    "merge_reports",
    "parse_shard",
    "plan_batch",
    "PlannedJob",
    "run_batch",
]
