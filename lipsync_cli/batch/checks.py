"""What a batch checks of each job before the first one runs: its files can be read, its weights resolve.

``job_problems(job)`` lists, in one line each, what would make the job fail for a reason the user can fix before
any work: an input (video, audio, track) that is missing or unreadable, a weights file named in the row that is
not there, a default (generator, S3FD, SyncNet, restorer from the registry; the SCRFD and ArcFace packs) that is
not on this machine (for registry files: when downloads are off; one that can be downloaded is fine, the worker
fetches it once). Weights are looked up once per batch (``WeightsCheck`` caches each answer).

Speaker files (reference photos, speaker audio, ``mix``) are checked by ``SpeakerSetup.validate`` when the row is
parsed. Whether a video decodes is not checked here (that needs ffmpeg on every file): such a job fails alone.
"""

from __future__ import annotations

from pathlib import Path

from lipsync_cli.errors import LipsyncError


def unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be opened as an input (the one check dub's own inputs get), or None."""
    from lipsync_cli.errors import InputNotFound
    from lipsync_cli.media.probe import _check_input

    try:
        _check_input(path)
    except InputNotFound as err:
        return str(err)
    return None


class WeightsCheck:
    """Answers "do these weights resolve" for many jobs, each distinct question looked up once."""

    def __init__(self) -> None:
        self._seen: dict[tuple, str | None] = {}

    def _cached(self, key: tuple, look) -> str | None:
        if key not in self._seen:
            try:
                look()
                self._seen[key] = None
            except LipsyncError as err:
                self._seen[key] = str(err)
        return self._seen[key]

    def registry(self, name: str, explicit, offline: bool | None, what: str) -> str | None:
        """``explicit`` must be a readable file; else registry entry ``name`` must be here or downloadable."""
        if explicit is not None:
            why = unreadable(Path(explicit))
            return None if why is None else f"{what}: {why}"

        def look():
            from lipsync_cli import weights

            if weights.find(name) is None and (offline or weights.is_offline()):
                weights.resolve(name, None, offline=True)  # raises WeightsNotFound with the download command

        return self._cached(("registry", name, bool(offline)), look)

    def scrfd(self, spec) -> str | None:
        """An SCRFD file, pack folder or pack name (never downloaded by a dub: it must be here)."""

        def look():
            from lipsync_cli.faces.scrfd import resolve_weights

            resolve_weights(spec)

        return self._cached(("scrfd", str(spec)), look)

    def arcface(self, spec) -> str | None:
        def look():
            from lipsync_cli.faces.identity import resolve_recognition_weights

            resolve_recognition_weights(spec)

        return self._cached(("arcface", str(spec)), look)


def job_problems(job, check: WeightsCheck) -> list[str]:
    """One line per problem of ``job`` (a ``manifest.Job``) that stops it before it runs; [] when it can run."""
    o = job.options
    out = []
    for what, path in (("video", job.video), ("audio", job.audio), ("track", o.track)):
        if path is not None:
            why = unreadable(Path(path))
            if why:
                out.append(f"{what}: {why}")
    out.append(check.registry("wav2lip_gan", o.checkpoint, o.offline, "checkpoint"))
    if o.box is None and o.track is None:  # faces are detected
        if o.detector == "s3fd":
            out.append(check.registry("s3fd", o.detector_weights, o.offline, "detector weights"))
        else:
            out.append(check.scrfd(o.detector_weights))
    if o.speakers is not None:
        if o.speakers.uses_identity:
            out.append(check.arcface(o.speakers.recognition_weights))
        if o.speakers.auto:
            out.append(check.registry("syncnet_v2", o.speakers.syncnet, o.offline, "syncnet"))
    if o.enhance:
        out.append(check.registry("gfpgan_v14", o.enhancer_weights, o.offline, "enhancer weights"))
    return [p for p in out if p]



