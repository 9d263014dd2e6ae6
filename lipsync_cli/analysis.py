"""The analysis pass: everything known about a video before it is dubbed, from one decode of it.

``analyse`` decodes the video once and feeds every analyser the options need from the same frames: the face
detector and the shot-cut detector (``faces.track.track_frames``), ArcFace embeddings of the faces and of a
reference box on one of the video's frames (``faces.identity``, for ``--ref-face`` / ``--speakers``), SyncNet's
speaking scores (``speakers.speaking_scores``, for ``--speaker auto``). What it returns (:class:`Analysis`: the
probe, the track with its embeddings and scores, the reference embeddings) is all the render pass needs to know
who is dubbed where; ``lipsync dub``, ``lipsync detect`` and the batch workers all come through here.

The analysis resolution: the detection size (``--det-size``) when only faces and cuts are wanted, as ffmpeg
shrinks the frames on decode. Identity and speaking scores need the faces' pixels: then the frames are decoded at
full resolution, shrunk for the detector here (area averaging, as ffmpeg's), and kept in a spool on disk
(``FrameSpool``, unlinked at creation) for the analysers that can only run once the track is complete (which
detections of a face track are embedded, SyncNet's median-filtered crops). Without room on disk for the spool,
each of those analysers decodes the video again (slower, same result). The enhancer's facial points
(``enhance.landmarks``) are found on the render pass's own frames, which it has at hand: they need no pass here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from lipsync_cli.faces.track import Track

log = logging.getLogger(__name__)


@dataclass
class Analysis:
    """What the analysis pass found: the video's probe, its track (None with a fixed ``--box``), and with
    identity the speakers' reference embeddings and each face track's distance to them."""

    info: object  # VideoInfo: the one probe of the video
    track: Track | None
    references: np.ndarray | None = None  # (S, D): the speakers' reference faces
    distances: np.ndarray | None = None  # (face tracks, S): for the preview of `lipsync detect`
    decodes: int = 0  # decodes of the video this analysis ran (0 when everything was known, else 1)
    seconds: float = 0.0  # wall time of the pass (the "detect" stage of dub)


class _Frames:
    """Frames of the analysis decode kept for the analysers that need them after it: ``keep`` (None: all)."""

    def __init__(self, keep: set[int] | None, spool):
        self.keep, self.spool, self.slot = keep, spool, {}

    def add(self, j: int, frame: np.ndarray) -> None:
        if self.keep is None or j in self.keep:
            self.slot[j] = self.spool.n
            self.spool.append(frame)

    def read(self, j: int) -> np.ndarray:
        return self.spool.read(self.slot[j])

    def reader(self, video) -> Callable[[int], np.ndarray]:
        """``read``, and for a frame not kept (a reference frame past the end) ``frame_at``: its own decode and
        its own error."""
        from lipsync_cli.faces.identity import frame_at

        return lambda j: self.read(j) if j in self.slot else frame_at(video, index=j)


@contextmanager
def _frame_store(info, keep: set[int] | None) -> Iterator[_Frames | None]:
    """A spool of the frames ``keep`` of ``info``'s video at full resolution, or None without room on disk."""
    from lipsync_cli.media.spool import FrameSpool, _spool_fits

    n = len(keep) if keep is not None else info.n_frames
    shape = (info.height, info.width, 3)
    if not _spool_fits(n, int(np.prod(shape)), None):
        log.warning("no room on disk to keep %s's frames for the analysers; they decode it again", info.path)
        yield None
        return
    spool = FrameSpool(shape)
    try:
        yield _Frames(keep, spool)
    finally:
        spool.close()


def analyse(video, info, options, *, device: str = "cpu", track: Track | None = None, setup=None,
            identity: bool = False, speaking: bool = False, detector=None, models=None, scorer=None,
            progress=None, notify: Callable[[str], None] | None = None, references: bool = True) -> Analysis:
    """The analysis of ``video`` (probed as ``info``) for ``options`` (a ``DubOptions``), in one decode at most.

    ``track``: the faces already found (``--track``): no detection; its embeddings and scores are kept when they
    are the ones wanted. ``setup``: who is dubbed (default ``options.speakers``): with reference faces the track
    gets embeddings and the references theirs, with ``auto`` speaking scores. ``identity`` / ``speaking`` ask
    for them without a setup (``lipsync detect --identity --speaking``). ``detector``, ``models`` (identity)
    and ``scorer`` (SyncNet): loaded already (a batch worker keeps them); else loaded here when needed.
    ``references=False``: the track alone (the batch's track cache), not the speakers' reference embeddings."""
    from lipsync_cli.dub import dub_fps, load_dub_detector
    from lipsync_cli.speakers import SpeakerSetup, check_own_audio, needs_embeddings

    t0 = time.perf_counter()
    setup = setup if setup is not None else options.speakers
    ids_wanted = identity or (setup is not None and setup.uses_identity)
    refs_wanted = references and setup is not None and setup.uses_identity
    score = (speaking or (setup is not None and setup.auto)) and (track is None or track.speaking is None)
    if score:  # before any work: scores need the video's own sound
        check_own_audio(video, info)
    if ids_wanted and models is None:
        from lipsync_cli.faces.identity import IdentityModels

        models = IdentityModels.load(setup.recognition_weights if setup is not None else None, options.detector,
                                     options.detector_weights, device)
    if score and scorer is None:
        from lipsync_cli.speakers import load_scorer

        scorer = load_scorer(setup or SpeakerSetup(auto=True), device, options.offline)
    detect = track is None and options.box is None
    embed = ids_wanted and (track is None or needs_embeddings(track, models))
    ref_frames = {s.reference.frame for s in setup.speakers
                  if s.reference is not None and s.reference.frame is not None} if refs_wanted else set()
    full = embed or score or bool(ref_frames)  # analysers that read the faces' pixels
    out = Analysis(info, track)
    if not detect and not full:
        out.references = _references(video, setup, models, notify, None) if refs_wanted else None
        return out
    fps = dub_fps(info, options)
    keep = None if detect else _frames_wanted(track, embed, score, ref_frames)
    with _frame_store(info, keep) if full else nullcontext() as store:
        if detect:
            detector = detector or load_dub_detector(options, device, notify, progress)
            track = _detect(video, info, options, device, fps, detector, full, store, progress)
        elif store is not None:
            _decode_into(video, info, fps, store, max(keep) + 1 if keep else 0)
        out.track = track
        out.decodes = 1 if detect or store is not None else 0
        frame_of = store.read if store is not None else None
        if embed:
            from lipsync_cli.speakers import ensure_embeddings

            ensure_embeddings(video, track, models, info=info, notify=notify, progress=progress, frame_of=frame_of)
        if score:
            from lipsync_cli.speakers import speaking_scores

            cb = (lambda k: progress("score speakers", k, None)) if progress else None
            track.speaking = speaking_scores(video, track, scorer, device=device, progress=cb, info=info,
                                             frame_of=frame_of)
        if refs_wanted:
            out.references = _references(video, setup, models, notify,
                                         store.reader(video) if store is not None else None)
    if refs_wanted:
        from lipsync_cli.faces.identity import face_track_embeddings, track_distances
        from lipsync_cli.faces.track import link_tracks

        fts = link_tracks(track.faces, cuts=track.cuts)
        out.distances = track_distances(face_track_embeddings(fts, track.embeddings), out.references)
    out.seconds = time.perf_counter() - t0
    return out


def _references(video, setup, models, notify, frame_of):
    from lipsync_cli.speakers import reference_embeddings

    return reference_embeddings(setup, models, video, notify, frame_of=frame_of)


def _frames_wanted(track: Track, embed: bool, score: bool, ref_frames: set[int]) -> set[int]:
    """With the track known before the pass: the frames the analysers will read (the others are not kept)."""
    from lipsync_cli.faces.identity import sample_detections

    n = len(track.faces)
    keep = set(ref_frames)
    if embed:
        keep |= set(sample_detections(track))
    if score:
        keep |= set(range(n))
    return keep


def _detect(video, info, options, device: str, fps: float, detector, full: bool, store: _Frames | None,
            progress) -> Track:
    """The faces and cuts of ``video``, from one decode: at the detection size, or (``full``) at full resolution,
    into ``store`` when there is one (the spool the other analysers read), shrunk here for the detector."""
    import cv2

    from lipsync_cli.device import autocast, resolve_precision
    from lipsync_cli.dub import detection_size
    from lipsync_cli.faces.track import detection_frame_size, track_frames
    from lipsync_cli.media.decode import FrameReader

    size = detection_frame_size(info, detection_size(options, device))
    total = info.frames_at(fps) if not info.is_image else info.n_frames
    cb = (lambda k: progress("detect", k, total)) if progress else None
    with FrameReader(video, fps=fps, info=info, size=None if full else size) as reader:
        def frames() -> Iterator[np.ndarray]:
            for j, frame in enumerate(reader):
                if store is not None:
                    store.add(j, frame)
                yield frame if size is None or not full else cv2.resize(frame, size, interpolation=cv2.INTER_AREA)

        with autocast(device, resolve_precision(options.precision, device)):
            track = track_frames(frames(), detector, info, float(reader.fps), size=size, every=options.detect_every,
                                 progress=cb, cut_threshold=options.cut_threshold)
    track.source = str(video)
    return track


def _decode_into(video, info, fps: float, store: _Frames, n: int) -> None:
    """The first ``n`` frames of ``video`` into ``store`` (the track is known: no detection)."""
    from lipsync_cli.media.decode import FrameReader

    with FrameReader(video, fps=None if info.is_image else fps, info=info, max_frames=n) as reader:
        for j, frame in enumerate(reader):
            store.add(j, frame)
