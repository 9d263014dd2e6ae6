"""Face tracks computed once: ``detect(video, options)``, with an optional cache keyed by the video's content.

A dubbing catalogue has each video several times (one job per language). The detection pass is the same for all
of them, so its track is stored in a cache folder under a key made of the video's content hash (SHA-256 of the
whole file: a renamed or touched copy is still a hit, an edited one never is) and every option that changes the
boxes (detector, its weights, detection size, every-Nth-frame, cut threshold, and the frame rate of a still
image). Writers take a lock on the key (``flock`` on a ``.KEY.lock`` file that exists only while it is held), so
two workers dubbing the same video into two languages at once detect it once: the second waits for the first and
reads its track.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from lipsync_cli.dub import DubOptions, ProgressFn, detect_track, detection_size
from lipsync_cli.faces.track import Track

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20
CACHE_VERSION = 1  # bump when the track computation changes, so old cache entries are not reused


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the whole file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _file_key(path: Path | None) -> str | None:
    return content_hash(path) if path is not None and Path(path).is_file() else (str(path) if path else None)


def detection_key(video_hash: str, options: DubOptions, device: str, is_image: bool) -> str:
    """The cache key of a track: the video's content hash and the options that change the detections."""
    parts = {
        "v": CACHE_VERSION,
        "video": video_hash,
        "detector": options.detector,
        "weights": _file_key(options.detector_weights),
        "det_size": detection_size(options, device),
        "every": options.detect_every,
        "cuts": options.cut_threshold,
        "fps": float(options.fps) if is_image else None,
        "precision": options.precision,
    }
    setup = options.speakers
    if setup is not None and setup.uses_identity:  # the track carries the embeddings of this ArcFace model
        parts["identity"] = _file_key(_recognition_file(setup.recognition_weights))
    if setup is not None and setup.auto:  # ... and the speaking scores of this SyncNet
        parts["speaking"] = _file_key(setup.syncnet) if setup.syncnet else "syncnet_v2"
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _recognition_file(spec) -> Path | None:
    from lipsync_cli.errors import WeightsNotFound
    from lipsync_cli.faces.identity import resolve_recognition_weights

    try:
        return resolve_recognition_weights(spec)
    except WeightsNotFound:  # said by the analysis itself, in its own words
        return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` for the block (released when the process dies too); the file is created for
    the block and removed after it, so the cache keeps only its entries.

    Removing a lock file is safe only with a check: a waiter may have opened the file just before the holder
    removed it, and would then hold a lock on a file nobody else sees. So after taking the lock, a writer checks
    that ``path`` is still the file it locked (same inode) and starts again if not; the holder removes the file
    before it unlocks."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; at worst two workers detect the same video
        yield
        return
    while True:
        f = open(path, "a+b")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
            except FileNotFoundError:  # removed by the holder we waited for
                same = False
        except BaseException:
            f.close()
            raise
        if same:
            break
        f.close()  # unlocks
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        f.close()  # unlocks, after the unlink: a waiter that gets the lock now sees a removed file


def cached_track(video: str | Path, options: DubOptions, cache_dir: str | Path, *, device: str = "cpu",
                 get_detector: Callable[[], object] | None = None, progress: ProgressFn | None = None,
                 notify: Callable[[str], None] | None = None, info=None) -> tuple[Path, bool]:
    """(path of the track file of ``video`` in ``cache_dir``, whether it was analysed now rather than found).

    The track is the analysis pass's (``lipsync_cli.analysis``): the faces and cuts, and what
    ``options.speakers`` needs of the video itself (the faces' embeddings, the speaking scores), so every
    language of a video is dubbed from one analysis. ``get_detector()``: returns a loaded detector
    (``load_dub_detector``), called only when detection runs: a batch worker keeps one for every video.
    ``info``: the video's probe, when the caller has it."""
    from lipsync_cli.analysis import analyse
    from lipsync_cli.media.probe import probe

    video, cache_dir = Path(video), Path(cache_dir)
    info = info or probe(video)
    key = detection_key(content_hash(video), options, device, info.is_image)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.track.json"
    with _locked(cache_dir / f".{key}.lock"):
        if path.is_file():
            try:
                Track.load(path).check_matches(info.width, info.height, None if info.is_image else info.n_frames)
                return path, False
            except Exception as err:  # noqa: BLE001 - a damaged cache entry is detected again, never fatal
                log.warning("track cache entry %s is unusable (%s); detecting again", path, err)
        setup = options.speakers
        track = analyse(video, info, dataclasses.replace(options, box=None, track=None), device=device,
                        setup=setup, detector=get_detector() if get_detector else None, progress=progress,
                        notify=notify, references=False).track
        track.save(path)  # atomic: a reader never sees half a track
    return path, True


def detect(video: str | Path, options: DubOptions = DubOptions(), *, cache_dir: str | Path | None = None,
           progress: ProgressFn | None = None, notify: Callable[[str], None] | None = None) -> Track:
    """Every face of every frame of ``video`` (a :class:`Track`, as ``lipsync detect`` writes), on
    ``options.device``. With ``cache_dir`` the track is read from / stored in that cache (see the module doc)."""
    from lipsync_cli.device import resolve_device
    from lipsync_cli.errors import InputNotFound

    options.validate()
    video = Path(video)
    if not video.is_file():
        raise InputNotFound(f"video file not found: {video}")
    device = resolve_device(options.device)
    if cache_dir is not None:
        path, _ = cached_track(video, options, cache_dir, device=device, progress=progress, notify=notify)
        return Track.load(path)
    from lipsync_cli.media.probe import probe

    return detect_track(video, options, device=device, progress=progress, notify=notify, info=probe(video))
