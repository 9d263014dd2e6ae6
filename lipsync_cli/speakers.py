"""Who is dubbed, with which audio: speakers found by identity, one audio track each, or the active speaker.

Three ways, all described by one plain structure, :class:`SpeakerSetup` (``DubOptions.speakers``; ``lipsync
detect`` and ``lipsync batch`` take the same), built from the command line or from a ``speakers.yaml``:

- **identity**: each speaker has a reference face (a photo, ``VIDEO@SECONDS``, or a box on a frame of the dubbed
  video); every face track of the video is given to the speaker whose reference embedding is nearest (ArcFace,
  :mod:`lipsync_cli.faces.identity`) when within the threshold, in every shot, across cuts. Faces of nobody we
  know keep their mouth.
- **one audio per speaker**: each speaker's mouth is driven by that speaker's own audio (every generator batch
  may hold faces of several speakers); the output's audio is ``mix`` when given, else the speakers' tracks
  summed with headroom (:func:`mix_tracks`), as long as the longest.
- **auto**: the face that speaks in the video's *own* audio, per window of ``window`` frames, is dubbed with the
  new audio. Each face track is scored against the original soundtrack with SyncNet v2, with ``eval lse``'s
  network and distance curve (:mod:`lipsync_cli.evaluate.lse`): the confidence (median - min of the curve over
  offsets) over a sliding window. The scores are stored in the track file (``lipsync detect --speakers``).

:func:`plan_faces` turns a track and a setup into the faces of each frame and the audio that drives each:
that is all ``dub`` needs to know.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lipsync_cli.constants import SAMPLE_RATE
from lipsync_cli.errors import BadOption, InputNotFound, NoAudioStream
from lipsync_cli.faces.identity import IDENTITY_THRESHOLD

log = logging.getLogger(__name__)

MIX_RATE = 48000  # Hz: the speakers' tracks are mixed at this rate (mono)
HEADROOM_DB = -1.0  # dBFS: a mix whose peak would pass this is scaled down to it (no clipping)
ACTIVE_WINDOW = 25  # frames: the dubbed face is chosen anew in each window of this many frames (1 s at 25 fps)
ACTIVE_MIN = 1.0  # SyncNet confidence a face must pass to count as speaking (a silent face scores ~0-1)
SCORE_WINDOW = 25  # 25-fps frames over which one speaking score averages SyncNet's distance curve
Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------------------------------------
# the description


@dataclass(frozen=True)
class Reference:
    """Whose face: ``photo`` (an image file), ``video`` at ``seconds`` (its largest face there, or the one in
    ``box``), or ``box`` on frame ``frame`` of the dubbed video itself."""

    photo: Path | None = None
    video: Path | None = None
    seconds: float | None = None
    box: tuple[float, float, float, float] | None = None
    frame: int | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """``PHOTO`` or ``VIDEO@SECONDS`` (``clip.mp4@12.5``)."""
        text = str(text)
        if "@" in text:
            path, _, sec = text.rpartition("@")
            try:
                seconds = float(sec)
            except ValueError:
                raise BadOption(f"--ref-face {text!r}: the time after @ must be seconds, e.g. clip.mp4@12.5") from None
            return cls(video=Path(path), seconds=seconds)
        return cls(photo=Path(text))

    def validate(self) -> None:
        given = sum(x is not None for x in (self.photo, self.video, self.frame))
        if given != 1:
            raise BadOption("a reference face is one of: a photo, VIDEO@SECONDS, or --ref-box with --ref-frame")
        for p in (self.photo, self.video):
            if p is not None and not Path(p).is_file():
                raise InputNotFound(f"reference face file not found: {p}")
        if self.seconds is not None and not (self.seconds >= 0 and math.isfinite(self.seconds)):
            raise BadOption(f"reference time must be >= 0 s, got {self.seconds}")
        if self.frame is not None:
            if self.frame < 0:
                raise BadOption(f"--ref-frame must be >= 0, got {self.frame}")
            if self.box is None:
                raise BadOption("--ref-frame needs --ref-box: the box of the face on that frame")
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            if x2 <= x1 or y2 <= y1:
                raise BadOption(f"reference box {self.box} is empty: give X1 Y1 X2 Y2 with X2 > X1 and Y2 > Y1")

    def describe(self) -> str:
        if self.photo is not None:
            return str(self.photo)
        if self.video is not None:
            return f"{self.video}@{self.seconds:g}"
        return f"the box {tuple(int(v) for v in self.box or ())} on frame {self.frame}"


@dataclass(frozen=True)
class SpeakerSpec:
    """One person: the audio that drives their mouth (None: the dub's AUDIO argument) and their face."""

    audio: Path | None = None
    reference: Reference | None = None
    name: str = ""
    threshold: float | None = None  # None: SpeakerSetup.identity_threshold

    @property
    def label(self) -> str:
        """How messages name this person: ``name``, else the reference ('alice.jpg', 'clip.mp4@3')."""
        return self.name or (self.reference.describe() if self.reference is not None else "the speaker")


@dataclass(frozen=True)
class SpeakerSetup:
    """Everything about who is dubbed with what, as plain data (frozen, comparable, picklable).

    speakers: the people, with their audio and reference faces (identity, one audio per speaker).
    auto: dub whoever speaks in the video's own audio, with the dub's AUDIO (no speakers then).
    mix: the output's audio; None: the speakers' tracks mixed (or the one AUDIO).
    recognition_weights: ArcFace pack name or ``.onnx`` (None: buffalo_l).
    identity_threshold: cosine distance beyond which a face is not the reference's person.
    syncnet: SyncNet v2 weights for ``auto`` (None: the registry's syncnet_v2).
    window: frames per choice of the active speaker; min_activity: the confidence a speaker must pass.
    """

    speakers: tuple[SpeakerSpec, ...] = ()
    auto: bool = False
    mix: Path | None = None
    recognition_weights: str | None = None
    identity_threshold: float = IDENTITY_THRESHOLD
    syncnet: Path | None = None
    window: int = ACTIVE_WINDOW
    min_activity: float = ACTIVE_MIN

    @property
    def uses_identity(self) -> bool:
        return any(s.reference is not None for s in self.speakers)

    @property
    def has_own_audio(self) -> bool:
        return any(s.audio is not None for s in self.speakers)

    def validate(self) -> None:
        if self.auto and self.speakers:
            raise BadOption("--speaker auto dubs whoever speaks with the one AUDIO: give no other --speaker")
        if not self.auto and not self.speakers:
            raise BadOption("no speaker given", "use --ref-face, --speaker AUDIO --ref-face PHOTO, or --speaker auto")
        if not 0 < self.identity_threshold <= 2:
            raise BadOption(f"--identity-threshold is a cosine distance in (0, 2], got {self.identity_threshold}")
        if self.window < 1:
            raise BadOption(f"the active-speaker window must be >= 1 frame, got {self.window}")
        if len(self.speakers) > 1 or self.has_own_audio:
            for k, s in enumerate(self.speakers):
                if s.reference is None:
                    raise BadOption(f"speaker {s.name or k + 1} has no reference face",
                                    "give one --ref-face per --speaker (or ref_face in speakers.yaml)")
        if len(self.speakers) > 1 and any(s.audio is None for s in self.speakers):
            raise BadOption("with several speakers every one needs their own audio")
        for s in self.speakers:
            if s.reference is not None:
                s.reference.validate()
            if s.audio is not None and not Path(s.audio).is_file():
                raise InputNotFound(f"speaker audio not found: {s.audio}")
            if s.threshold is not None and not 0 < s.threshold <= 2:
                raise BadOption(f"threshold of speaker {s.name or s.audio}: a cosine distance in (0, 2]")
        if self.mix is not None and not Path(self.mix).is_file():
            raise InputNotFound(f"--mix file not found: {self.mix}")

    def thresholds(self) -> list[float]:
        return [self.identity_threshold if s.threshold is None else s.threshold for s in self.speakers]

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> SpeakerSetup:
        """Read a speakers file; paths in it are relative to its folder.

        ``speakers``: a list of ``{name, audio, ref_face}`` (``ref_face``: PHOTO or VIDEO@SECONDS) or
        ``{name, audio, ref_box: [x1, y1, x2, y2], ref_frame: N}``, each optionally with ``threshold``;
        ``mix``, ``identity_threshold``, ``recognition_weights`` at the top. ``overrides`` replace top-level
        fields (the command line wins)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise InputNotFound(f"speakers file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise BadOption(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict) or not isinstance(data.get("speakers"), list) or not data["speakers"]:
            raise BadOption(f"{path}: expected a mapping with a non-empty `speakers:` list")
        base = path.parent

        def rel(p) -> Path:
            q = Path(str(p)).expanduser()
            return q if q.is_absolute() else base / q

        known = {"name", "audio", "ref_face", "ref_box", "ref_frame", "threshold"}
        specs = []
        for k, entry in enumerate(data["speakers"]):
            if not isinstance(entry, dict) or set(entry) - known:
                extra = sorted(set(entry) - known) if isinstance(entry, dict) else entry
                raise BadOption(f"{path}: speaker {k + 1} has unknown fields {extra}",
                                f"known: {', '.join(sorted(known))}")
            ref = None
            if entry.get("ref_face") is not None:
                ref = Reference.parse(str(entry["ref_face"]))
                ref = Reference(photo=rel(ref.photo) if ref.photo else None,
                                video=rel(ref.video) if ref.video else None, seconds=ref.seconds)
            elif entry.get("ref_box") is not None:
                box = entry["ref_box"]
                if not isinstance(box, list) or len(box) != 4:
                    raise BadOption(f"{path}: speaker {k + 1}: ref_box is [x1, y1, x2, y2]")
                ref = Reference(box=tuple(float(v) for v in box), frame=entry.get("ref_frame"))
            specs.append(SpeakerSpec(audio=rel(entry["audio"]) if entry.get("audio") else None, reference=ref,
                                     name=str(entry.get("name") or f"speaker {k + 1}"),
                                     threshold=None if entry.get("threshold") is None else float(entry["threshold"])))
        top = {}
        if data.get("mix"):
            top["mix"] = rel(data["mix"])
        if data.get("identity_threshold") is not None:
            top["identity_threshold"] = float(data["identity_threshold"])
        if data.get("recognition_weights"):
            top["recognition_weights"] = str(data["recognition_weights"])
        top.update({k: v for k, v in overrides.items() if v is not None})
        return cls(speakers=tuple(specs), **top)


# ----------------------------------------------------------------------------------------------------------
# audio


@dataclass
class Voices:
    """The audio side of a dub: one mel per voice (all the same length), and what the output's audio is: the
    file ``audio``, or (when None) the mix of ``mix_sources`` made by :func:`output_audio`."""

    mels: list[np.ndarray]  # (80, T) each
    n_samples: int  # 16 kHz samples of the longest track
    audio: Path | None
    mix_sources: tuple[Path, ...] = ()
    wavs: list[np.ndarray] = field(default_factory=list)  # 16 kHz mono of each voice (for its speech activity)


def mix_tracks(tracks: Sequence[np.ndarray], headroom_db: float = HEADROOM_DB) -> np.ndarray:
    """Sum float tracks of one shape per sample ((n,) mono or (n, channels)), zero-padded to the longest; scaled
    down so the peak is at most ``headroom_db`` dBFS when the sum would pass it (never scaled up)."""
    n = max(len(t) for t in tracks)
    out = np.zeros((n, *np.shape(tracks[0])[1:]), np.float64)
    for t in tracks:
        out[:len(t)] += t
    peak = float(np.max(np.abs(out))) if n else 0.0
    limit = 10 ** (headroom_db / 20)
    if peak > limit:
        out *= limit / peak
    return out.astype(np.float32)


def load_voices(audio: Path | None, setup: SpeakerSetup | None, audio_info=None) -> Voices:
    """Mels of each voice, and the output's audio.

    Without per-speaker audio there is one voice, ``audio``. With it, voice k is speaker k's track; shorter
    tracks are padded with silence to the longest, so each mouth closes when its speaker is done, and ``audio``
    (when given) is the output's sound, as ``--mix`` is (both at once is refused: neither is ever ignored).
    ``audio_info``: ``audio``'s probe, when the caller has it."""
    from lipsync_cli.audio import load_audio, melspectrogram

    if setup is not None and setup.has_own_audio and audio is not None:
        if setup.mix:  # two files would both be the output's sound: never ignore one
            raise BadOption(f"AUDIO {audio} and --mix {setup.mix} both give the output's sound: each --speaker "
                            "has their own track to drive their mouth", "drop one of them")
        setup = replace(setup, mix=Path(audio))  # AUDIO beside per-speaker tracks is the mix
    if setup is None or not setup.has_own_audio:
        if audio is None:
            raise BadOption("no audio given", "give AUDIO, or --speaker AUDIO --ref-face PHOTO per person")
        wav = load_audio(audio, info=audio_info)
        return Voices([melspectrogram(wav)], len(wav), Path(setup.mix) if setup and setup.mix else Path(audio),
                      wavs=[wav])
    wavs = [load_audio(s.audio) for s in setup.speakers]
    n = max(len(w) for w in wavs)
    wavs = [np.pad(w, (0, n - len(w))) for w in wavs]
    mels = [melspectrogram(w) for w in wavs]
    sources = tuple(Path(s.audio) for s in setup.speakers)
    return Voices(mels, n, Path(setup.mix) if setup.mix else None, sources, wavs=wavs)


@contextmanager
def output_audio(voices: Voices) -> Iterator[Path]:
    """The file the output video carries: ``voices.audio``, or the speakers' tracks mixed at ``MIX_RATE``
    (:func:`mix_tracks`) into a temporary WAV that is deleted afterwards."""
    if voices.audio is not None:
        yield voices.audio
        return
    import tempfile

    import soundfile

    from lipsync_cli.audio import load_audio
    from lipsync_cli.media.probe import probe_audio

    # stereo when any track is (a mono track then sits in the middle), else mono; more channels fold to stereo
    channels = 2 if any((probe_audio(p).channels or 1) > 1 for p in voices.mix_sources) else 1
    with tempfile.TemporaryDirectory(prefix="lipsync-mix-") as folder:
        path = Path(folder) / "speakers-mix.wav"
        tracks = [load_audio(p, sr=MIX_RATE, channels=channels) for p in voices.mix_sources]
        soundfile.write(str(path), mix_tracks(tracks), MIX_RATE, subtype="FLOAT")
        yield path


# ----------------------------------------------------------------------------------------------------------
# identity


def needs_embeddings(track, models) -> bool:
    """Whether ``track`` lacks the embeddings of ``models``' embedder (none, or another model's)."""
    return track.embeddings is None or track.embedder != models.embedder.model_id


def ensure_embeddings(video: Path, track, models, info=None, notify=None, progress=None, frame_of=None) -> None:
    """Give ``track`` the embeddings of ``models``' embedder, computing them when it has none or another
    model's (``frame_of``: see ``embed_track``)."""
    from lipsync_cli.faces.identity import embed_track

    model_id = models.embedder.model_id
    if not needs_embeddings(track, models):
        return
    if track.embeddings is not None and notify is not None:
        notify(f"the track's face embeddings were made by {track.embedder}, not {model_id}: computing them again")
    cb = (lambda k: progress("identify", k, len(track))) if progress else None
    track.embeddings = embed_track(video, track, models, info=info, progress=cb, frame_of=frame_of)
    track.embedder = model_id


def reference_embeddings(setup: SpeakerSetup, models, video: Path, notify=None, frame_of=None) -> np.ndarray:
    """(S, D) embeddings of the speakers' reference faces (``frame_of(j)``: frame ``j`` of ``video`` already
    decoded, for a reference given as a box on one of its frames)."""
    from lipsync_cli.faces.identity import _read_image, embed_reference, frame_at

    out = []
    for s in setup.speakers:
        ref = s.reference
        what = f"the reference of {s.name}" if s.name else f"the reference {ref.describe()}"
        if ref.photo is not None:
            image = _read_image(Path(ref.photo))
        elif ref.video is not None:
            image = frame_at(ref.video, seconds=ref.seconds)
        elif frame_of is not None:
            image = frame_of(ref.frame)
        else:
            image = frame_at(video, index=ref.frame)
        out.append(embed_reference(image, models, ref.box, what=what, notify=notify))
    return np.stack(out)


def identity_boxes(track, face_tracks, track_embeddings, references: np.ndarray, thresholds: Sequence[float]
                   ) -> tuple[list[list[np.ndarray | None]], list[list[int]], np.ndarray]:
    """Per speaker, the raw (4,) box of their face in each frame (None: not on screen) and segment ids; plus
    the (T, S) distances. Each face track goes to the nearest reference within its threshold. One person is on
    screen once: of two face tracks of one speaker that share a frame, only the nearer is that speaker, in all its
    frames; the farther one is nobody (a look-alike, or a reflection), even where the nearer one is missing."""
    from lipsync_cli.faces.identity import assign_tracks, track_distances

    n = len(track.faces)
    dist = track_distances(track_embeddings, references)
    owner = assign_tracks(dist, thresholds)
    raws = [[None] * n for _ in range(len(references))]
    segs = [[-1] * n for _ in range(len(references))]
    taken = [np.zeros(n, bool) for _ in range(len(references))]
    for t in sorted(range(len(face_tracks)), key=lambda t: dist[t, owner[t]] if owner[t] >= 0 else np.inf):
        s, ft = owner[t], face_tracks[t]
        if s < 0:
            continue
        if taken[s][ft.first:ft.last + 1].any():  # a nearer face of this speaker is on screen at the same time
            continue
        taken[s][ft.first:ft.last + 1] = True
        for f, box in zip(ft.frames, ft.boxes):
            raws[s][f] = box.copy()
            segs[s][f] = t
    return raws, segs, dist


# ----------------------------------------------------------------------------------------------------------
# the active speaker


def speaking_scores(video: Path, track, model, *, device: str = "cpu", batch_size: int = 20,
                    window: int = SCORE_WINDOW, progress: Callable[[int], None] | None = None, info=None,
                    frame_of: Callable[[int], np.ndarray] | None = None) -> list[np.ndarray]:
    """How much each detection of ``track`` is the one speaking in ``video``'s own audio: per frame an (N,)
    float32 (NaN for detections of face tracks too short to score).

    Each face track (:func:`lipsync_cli.faces.track.link_tracks`) is followed at SyncNet's 25 fps; its SyncNet
    crops and the audio under it give lip and audio embeddings (``lse.sync_embeddings``), their distances at
    offsets -15..15 (``lse.offset_distances``); a frame's score is the confidence (median - min of the distance
    curve, ``lse.scores_from_distances``) over the ``window`` windows centred on it: high when the lips move
    with the sound. Needs the original audio; raises NoAudioStream without it (:func:`check_own_audio`).

    ``info``: the video's probe, when the caller has it; ``frame_of(j)``: source frame ``j`` from frames already
    decoded (the analysis pass): the 25-fps frame k is source frame ``round(k * fps / 25)``. Without it, the video
    is decoded again at 25 fps."""
    from lipsync_cli.evaluate import lse
    from lipsync_cli.faces.track import link_tracks
    from lipsync_cli.media.decode import FrameReader
    from lipsync_cli.media.probe import probe

    info = info or probe(video)
    check_own_audio(video, info)
    pcm = lse.read_pcm16(video)[round(info.start_time * SAMPLE_RATE):]
    n = len(track.faces)
    scores = [np.full(len(f), np.nan, np.float32) for f in track.faces]
    fts = [ft for ft in link_tracks(track.faces, cuts=track.cuts) if len(ft.frames) >= 2]
    n25 = int(math.floor(n / track.fps * lse.SYNC_FPS)) if not info.is_image else 0
    src_of = [min(n - 1, int(round(j * track.fps / lse.SYNC_FPS))) for j in range(n25)]  # 25-fps -> source
    # per face track: the 25-fps frames it covers and its box in each (gaps interpolated)
    spans = []
    for ft in fts:
        js = [j for j in range(n25) if ft.first <= src_of[j] <= ft.last]
        if len(js) < lse.MIN_FRAMES:
            continue
        b = np.stack(ft.boxes)
        boxes = np.stack([np.interp([src_of[j] for j in js], ft.frames, b[:, c]) for c in range(4)], axis=1)
        spans.append((ft, js, lse.crop_params(boxes)))
    if not spans:
        return scores
    crops: list[list[np.ndarray]] = [[] for _ in spans]

    def crop(j: int, frame: np.ndarray) -> None:
        if progress is not None:
            progress(1)
        for k, (_, js, params) in enumerate(spans):
            if js[0] <= j <= js[-1]:
                crops[k].append(lse.syncnet_crop(frame, params[j - js[0]]))

    if frame_of is not None:
        for j in range(min(js[0] for _, js, _ in spans), max(js[-1] for _, js, _ in spans) + 1):
            crop(j, frame_of(src_of[j]))
    else:
        with FrameReader(video, fps=lse.SYNC_FPS, info=info, max_frames=n25) as reader:
            for j, frame in enumerate(reader):
                crop(j, frame)
    half = window // 2
    for (ft, js, _), cs in zip(spans, crops):
        frames = lse.to_syncnet_frames(cs)
        seg = pcm[js[0] * lse.SAMPLES_PER_FRAME:(js[0] + len(frames)) * lse.SAMPLES_PER_FRAME]
        if lse.n_windows(len(frames), len(seg)) <= 0:
            continue
        lip, aud = lse.sync_embeddings(model, frames, seg, batch_size=batch_size, device=device)
        dists = lse.offset_distances(lip, aud)  # (W, 31)
        w = dists.shape[0]
        conf = np.array([lse.scores_from_distances(dists[max(0, v - half):min(w, v + half + 1)]).lse_c
                         for v in range(w)], np.float32)  # (W,)
        per25 = {js[0] + k: conf[min(w - 1, max(0, k - lse.SYNC_T // 2))] for k in range(len(frames))}
        row_of = dict(zip(ft.frames, ft.rows))
        for j, c in per25.items():
            if j < n25:
                s = src_of[j]
                if s in row_of:
                    scores[s][row_of[s]] = c
        # source frames between two 25-fps samples take the nearest one's score
        lo, hi = js[0], js[0] + len(frames) - 1  # per25's keys: every 25-fps frame in lo..hi
        for f, r in row_of.items():
            if not np.isfinite(scores[f][r]):
                scores[f][r] = per25[min(hi, max(lo, int(round(f * lse.SYNC_FPS / track.fps))))]
    return scores


def check_own_audio(video: Path, info) -> None:
    """--speaker auto scores faces against the video's own sound: NoAudioStream when ``info`` has none."""
    if not info.has_audio:
        raise NoAudioStream(f"{video} has no audio: --speaker auto finds who speaks in the video's own sound",
                            "give each person their audio with --speaker AUDIO --ref-face PHOTO")


def active_boxes(track, face_tracks, window: int = ACTIVE_WINDOW, min_activity: float = ACTIVE_MIN
                 ) -> tuple[list[np.ndarray | None], list[int]]:
    """The speaking face's raw (4,) box per frame, from ``track.speaking``: in each window of ``window`` frames
    (windows restart at every shot cut) the face track with the highest mean score is dubbed where it is
    present, when that mean passes ``min_activity``; nobody else. Segment ids are face track indices."""
    from lipsync_cli.faces.track import shot_bounds

    n = len(track.faces)
    raw: list[np.ndarray | None] = [None] * n
    seg = [-1] * n
    if track.speaking is None:
        raise BadOption("the track has no speaking scores", "run `lipsync detect --speakers` or drop --track")
    for lo, hi in shot_bounds(n, track.cuts):
        for a in range(lo, hi, window):
            b = min(hi, a + window)
            best, best_score = None, -math.inf
            for t, ft in enumerate(face_tracks):
                part = ft.within(a, b)
                vals = [track.speaking[f][r] for f, r in zip(ft.frames[part], ft.rows[part])]
                vals = [v for v in vals if np.isfinite(v)]
                if vals and float(np.mean(vals)) > best_score:
                    best, best_score = t, float(np.mean(vals))
            if best is None or best_score <= min_activity:
                continue
            ft = face_tracks[best]
            part = ft.within(a, b)
            for f, box in zip(ft.frames[part], ft.boxes[part]):
                raw[f] = box.copy()
                seg[f] = best
    return raw, seg


def load_scorer(setup: SpeakerSetup, device: str, offline: bool | None = None):
    from lipsync_cli.evaluate.lse import load_syncnet

    return load_syncnet(setup.syncnet, device=device, offline=offline)


# ----------------------------------------------------------------------------------------------------------
# the plan dub follows


@dataclass
class FacePlan:
    """Which faces each source frame has, and which voice drives each: ``faces[j]`` = [(box, voice), ...]."""

    faces: list[list[tuple[Box, int]]]
    n_voices: int
    distances: np.ndarray | None = None  # (face tracks, speakers), identity only
    notes: list[str] = field(default_factory=list)

    def of(self, j: int) -> list[tuple[Box, int]]:
        if not self.faces:
            return []
        return self.faces[j] if j < len(self.faces) else self.faces[-1]


def plan_faces(video: Path, track, setup: SpeakerSetup, track_options, *, detector: str = "s3fd",
               detector_weights=None, device: str = "cpu", info=None, offline: bool | None = None,
               notify: Callable[[str], None] | None = None, progress=None, models=None, scorer=None,
               references: np.ndarray | None = None) -> FacePlan:
    """The faces of every source frame of ``video`` (described by ``track``) and the voice of each, for
    ``setup``. ``models`` (identity) and ``scorer`` (SyncNet) may be given ready (tests, batch runs); a track
    from the analysis pass (``lipsync_cli.analysis``) has its embeddings and scores already, and ``references``
    are the speakers' reference embeddings (``reference_embeddings``)."""
    from lipsync_cli.faces.track import finish_boxes, link_tracks

    face_tracks = link_tracks(track.faces, cuts=track.cuts, min_score=track_options.min_score,
                              max_gap=track_options.max_gap)
    n = len(track.faces)
    plan = FacePlan([[] for _ in range(n)], max(1, len(setup.speakers) if setup.has_own_audio else 1))
    if setup.auto:
        if track.speaking is None:
            if scorer is None:
                scorer = load_scorer(setup, device, offline)
            cb = (lambda k: progress("score speakers", k, None)) if progress else None
            track.speaking = speaking_scores(video, track, scorer, device=device, progress=cb, info=info)
        raw, seg = active_boxes(track, face_tracks, setup.window, setup.min_activity)
        for j, b in enumerate(finish_boxes(raw, seg, track_options, track.width, track.height)):
            if b is not None:
                plan.faces[j].append((b, 0))
        return plan
    from lipsync_cli.faces.identity import IdentityModels, face_track_embeddings

    if models is None and (references is None or track.embeddings is None):
        models = IdentityModels.load(setup.recognition_weights, detector, detector_weights, device)
    if models is not None:
        ensure_embeddings(video, track, models, info=info, notify=notify, progress=progress)
    refs = references if references is not None else reference_embeddings(setup, models, video, notify)
    raws, segs, dist = identity_boxes(track, face_tracks, face_track_embeddings(face_tracks, track.embeddings),
                                      refs, setup.thresholds())
    plan.distances = dist
    for s, (raw, seg) in enumerate(zip(raws, segs)):
        voice = s if setup.has_own_audio else 0
        found = 0
        for j, b in enumerate(finish_boxes(raw, seg, track_options, track.width, track.height)):
            if b is not None:
                plan.faces[j].append((b, voice))
                found += 1
        if found == 0 and notify is not None:
            spec = setup.speakers[s]
            near = float(np.min(dist[:, s])) if dist.size and np.isfinite(dist[:, s]).any() else math.inf
            notify(f"warning: {spec.label} is not in the video (nearest face at "
                   f"distance {near:.2f}, threshold {setup.thresholds()[s]:.2f}); their frames pass through")
    return plan


def setup_from_options(*, speaker: Sequence[str] = (), ref_face: Sequence[str] = (), ref_box=None,
                       ref_frame: int | None = None, speakers_file: Path | None = None, mix: Path | None = None,
                       recognition_weights: str | None = None, identity_threshold: float | None = None,
                       syncnet: Path | None = None) -> SpeakerSetup | None:
    """The :class:`SpeakerSetup` that command-line options describe (None: none of them was given).

    ``speaker``: ``["auto"]``, or audio files paired in order with ``ref_face`` (PHOTO or VIDEO@SECONDS);
    ``ref_face`` alone: one person dubbed with the dub's AUDIO; ``ref_box`` with ``ref_frame``: that person is
    the face in the box on that frame of the dubbed video; ``speakers_file``: a speakers.yaml (options given
    here override its top-level fields)."""
    speaker, ref_face = list(speaker or ()), list(ref_face or ())
    top = {"mix": mix, "recognition_weights": recognition_weights, "identity_threshold": identity_threshold,
           "syncnet": syncnet}
    top = {k: v for k, v in top.items() if v is not None}
    box_ref = None
    if ref_frame is not None:
        if ref_box is None:
            raise BadOption("--ref-frame needs --ref-box: the box of the person's face on that frame")
        box_ref = Reference(box=tuple(float(v) for v in ref_box), frame=int(ref_frame))
    if speakers_file is not None:
        if speaker or ref_face or box_ref:
            raise BadOption("--speakers FILE describes every speaker: drop --speaker / --ref-face / --ref-frame")
        return SpeakerSetup.from_yaml(speakers_file, **top)
    if speaker == ["auto"]:
        if ref_face or box_ref:
            raise BadOption("--speaker auto finds the speaker itself: drop --ref-face / --ref-frame")
        return SpeakerSetup(auto=True, **top)
    if "auto" in speaker:
        raise BadOption("--speaker auto cannot be combined with other --speaker tracks")
    refs = [Reference.parse(r) for r in ref_face] + ([box_ref] if box_ref else [])
    if speaker:
        if len(refs) != len(speaker):
            raise BadOption(f"{len(speaker)} --speaker track(s) but {len(refs)} reference face(s)",
                            "give each --speaker AUDIO its --ref-face PHOTO, in the same order")
        specs = tuple(SpeakerSpec(audio=Path(a), reference=r, name=f"speaker {k + 1}")
                      for k, (a, r) in enumerate(zip(speaker, refs)))
        return SpeakerSetup(speakers=specs, **top)
    if len(refs) > 1:
        raise BadOption("several reference faces but one AUDIO", "give each person their audio with --speaker")
    if refs:
        return SpeakerSetup(speakers=(SpeakerSpec(audio=None, reference=refs[0]),), **top)
    if "mix" in top:
        raise BadOption("--mix is the audio of a dub with several --speaker tracks")
    return None
