"""Who a face is: ArcFace embeddings (insightface's recognition models) and matching them to a reference.

A face is aligned to ArcFace's 112x112 template from its five landmarks (eyes, nose tip, mouth corners) with
``insightface.utils.face_align.norm_crop`` and embedded by an ``insightface.model_zoo`` ArcFace model (the
``buffalo_l`` pack's ``w600k_r50.onnx``, or any ArcFace ``.onnx``). The five points come from SCRFD run on a crop
around each box, so identity works whichever detector found the faces (S3FD gives no landmarks): it needs an SCRFD
file, the pack's ``det_*.onnx`` or ``--detector insightface``'s weights.

Distances are cosine distances, 1 - cos(a, b), in [0, 2]: the same person is near 0, two people near 1.
A face track's embedding is the mean of the embeddings of up to ``EMBED_SAMPLES`` of its detections.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lipsync_cli.errors import BadOption, CheckpointError, CheckpointMismatch, WeightsNotFound

log = logging.getLogger(__name__)

DEFAULT_RECOGNITION_PACK = "buffalo_l"
RECOGNITION_FILES = ("w600k_r50.onnx", "w600k_mbf.onnx", "glintr100.onnx")  # the packs' ArcFace files
IDENTITY_THRESHOLD = 0.6  # cosine distance: a face farther than this from every reference is nobody we know
EMBED_SAMPLES = 5  # detections embedded per face track, spread over its frames
LANDMARK_CROP = 1.8  # the crop SCRFD looks for the 5 points in: this x the box's longer side, centred on it
LANDMARK_SIZE = 160  # px: that crop's side for SCRFD (a multiple of its stride 32)
RECOGNITION_HINT = ("unzip insightface's buffalo_l.zip (github.com/deepinsight/insightface releases) into "
                    "~/.insightface/models/buffalo_l, or pass --recognition-weights FILE.onnx")


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos between the rows of ``a`` (A, D) and ``b`` (B, D): an (A, B) array (NaN rows stay NaN)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return 1.0 - a @ b.T


def mean_embedding(vectors: Sequence[np.ndarray]) -> np.ndarray | None:
    """The unit mean of some embeddings (NaN rows ignored), or None when there are none."""
    rows = [np.asarray(v, dtype=np.float64) for v in vectors if v is not None and np.all(np.isfinite(v))]
    if not rows:
        return None
    m = np.mean([r / max(np.linalg.norm(r), 1e-12) for r in rows], axis=0)
    return (m / max(np.linalg.norm(m), 1e-12)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# weights


def _pack_dirs(spec: str) -> list[Path]:
    from lipsync_cli import weights as registry

    dirs = [d / spec for d in registry.weights_dirs()] + [registry.insightface_root() / spec]
    if spec in registry.REGISTRY:  # the registry's pack file (det_10g.onnx) sits in the pack's folder
        found = registry.find(spec)
        if found is not None:
            dirs.insert(0, found.parent)
    return list(dict.fromkeys(dirs))


def _recognition_in(folder: Path) -> Path | None:
    for name in RECOGNITION_FILES:
        if (folder / name).is_file():
            return folder / name
    others = sorted(p for p in folder.glob("*.onnx") if not p.name.startswith(("det_", "1k3d", "2d106", "genderage")))
    return others[0] if others else None


def resolve_recognition_weights(spec: str | os.PathLike | None) -> Path:
    """An ArcFace ``.onnx`` from a file path, a pack folder or a pack name (default ``buffalo_l``), looked up in
    the weights folders of ``lipsync weights list``, beside the registry's pack file and in insightface's
    ``$INSIGHTFACE_HOME/models/<pack>``. Raises WeightsNotFound naming where it looked."""
    text = DEFAULT_RECOGNITION_PACK if spec is None or str(spec) == "" else str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.suffix.lower() == ".onnx":
        raise WeightsNotFound(f"face recognition weights not found: {path}", RECOGNITION_HINT)
    dirs = [path] if path.is_dir() else []
    if os.sep not in text and "/" not in text:
        dirs += _pack_dirs(text)
    for d in dirs:
        found = _recognition_in(d) if d.is_dir() else None
        if found is not None:
            return found
    looked = ", ".join(str(d / RECOGNITION_FILES[0]) for d in dirs) or text
    raise WeightsNotFound(f"no ArcFace recognition model for {text!r}: looked at {looked}", RECOGNITION_HINT)


def resolve_landmark_weights(recognition: Path, detector: str, detector_weights: str | os.PathLike | None) -> Path:
    """The SCRFD file that gives the 5 landmarks: the dub's own detector when it is insightface, else the
    ``det_*.onnx`` beside the recognition model, else the default pack's."""
    from lipsync_cli.faces.scrfd import resolve_weights

    if detector in ("insightface", "scrfd"):
        return resolve_weights(detector_weights)
    beside = sorted(recognition.parent.glob("det_*.onnx"))
    if beside:
        return beside[0]
    try:
        return resolve_weights(None)
    except WeightsNotFound:
        raise WeightsNotFound(
            "identity needs the 5 face landmarks of an insightface SCRFD detector, and none was found "
            f"(S3FD gives none; looked beside {recognition} and in the buffalo_l pack)",
            "use --detector insightface --detector-weights FILE.onnx, or install the buffalo_l pack") from None


# ----------------------------------------------------------------------------------------------------------
# models


class Landmarker:
    """The 5 ArcFace landmarks of faces, found by SCRFD (see :mod:`lipsync_cli.faces.scrfd`)."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        from lipsync_cli.faces.scrfd import SCRFDDetector

        self.scrfd = SCRFDDetector(path, device, det_size=LANDMARK_SIZE, threads=threads)
        if not self.scrfd.use_kps:
            raise CheckpointMismatch(f"{path} is an SCRFD detector without keypoints",
                                     "identity needs a *_kps / bnkps model such as the pack's det_10g.onnx")
        self.whole = SCRFDDetector(path, device, det_size=640, threads=threads)

    def in_boxes(self, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(K, 5, 2) landmarks (frame pixels) of the faces in (K, 4+) ``boxes``; NaN where SCRFD finds no face
        overlapping the box in a crop of ``LANDMARK_CROP`` x its side."""
        import cv2

        from lipsync_cli.faces.boxes import box_iou

        h, w = frame.shape[:2]
        out = np.full((len(boxes), 5, 2), np.nan, np.float32)
        for k, b in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, np.shape(boxes)[-1])):
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            half = max(b[2] - b[0], b[3] - b[1]) * LANDMARK_CROP / 2
            x0, y0 = int(round(cx - half)), int(round(cy - half))
            side = max(2, int(round(2 * half)))
            crop = np.zeros((side, side, 3), np.uint8)  # zero padding past the frame's edges
            sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
            if sx1 <= sx0 or sy1 <= sy0:
                continue
            crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
            scale = LANDMARK_SIZE / side
            small = cv2.resize(crop, (LANDMARK_SIZE, LANDMARK_SIZE), interpolation=cv2.INTER_AREA
                               if scale < 1 else cv2.INTER_LINEAR)
            dets, kps = self.scrfd.detect_one(small)
            if not len(dets):
                continue
            box_small = (np.asarray(b[:4]) - [x0, y0, x0, y0]) * scale
            iou = box_iou(box_small[None], dets[:, :4])[0]
            best = int(np.argmax(iou))
            if iou[best] < 0.3:
                continue
            out[k] = kps[best] / scale + np.array([x0, y0], np.float32)
        return out

    def faces(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every face of a whole image: (N, 5) boxes with scores, (N, 5, 2) landmarks, best score first."""
        dets, kps = self.whole.detect_one(image)
        return dets, (kps if kps is not None else np.zeros((0, 5, 2), np.float32))


class FaceEmbedder:
    """An ArcFace model loaded through ``insightface.model_zoo`` (onnxruntime): ``embed(frame, landmarks)``.

    ``model_id`` names the model in track files (file name and size): embeddings of two models are not
    comparable, so a track's embeddings are recomputed when it was made with another model."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        from insightface.model_zoo import model_zoo

        self.path = Path(path)
        from lipsync_cli.faces.scrfd import providers_for

        providers = providers_for(device)
        try:
            model = model_zoo.get_model(str(self.path), providers=providers)
        except Exception as err:  # noqa: BLE001 - onnx/onnxruntime raise many kinds on a bad file
            first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise CheckpointError(f"cannot load face recognition model {self.path}: {first}",
                                  RECOGNITION_HINT) from None
        if type(model).__name__ != "ArcFaceONNX":
            raise CheckpointMismatch(f"{self.path} is not an ArcFace recognition model "
                                     f"(insightface reads it as {type(model).__name__ if model else 'nothing'})",
                                     "pass the pack's w600k_r50.onnx")
        self.model = model
        self.size = int(model.input_size[0])
        batch = model.input_shape[0]
        self.batch = batch if isinstance(batch, int) and batch > 0 else 32
        self.dim = int(model.output_shape[-1]) if isinstance(model.output_shape[-1], int) else None
        self.model_id = f"{self.path.name}:{self.path.stat().st_size}"

    def aligned(self, frame: np.ndarray, landmarks: np.ndarray) -> list[np.ndarray]:
        """The (size, size, 3) BGR crops of the faces with (K, 5, 2) ``landmarks``, ArcFace-aligned."""
        import warnings

        from insightface.utils import face_align

        with warnings.catch_warnings():  # insightface calls scikit-image's deprecated estimate(); not the user's
            warnings.filterwarnings("ignore", message=r"`estimate` is deprecated", category=FutureWarning)
            return [face_align.norm_crop(frame, landmark=np.asarray(lm, np.float32), image_size=self.size)
                    for lm in landmarks]

    def embed_aligned(self, crops: list[np.ndarray]) -> np.ndarray:
        """(K, D) unit embeddings of aligned crops."""
        out = []
        for s in range(0, len(crops), self.batch):
            out.append(np.asarray(self.model.get_feat(crops[s:s + self.batch]), dtype=np.float32))
        if not out:
            return np.zeros((0, self.dim or 0), np.float32)
        emb = np.concatenate(out).reshape(len(crops), -1)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def embed(self, frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(K, D) unit embeddings of the faces with (K, 5, 2) ``landmarks``; NaN rows where they are NaN."""
        landmarks = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
        ok = [k for k in range(len(landmarks)) if np.all(np.isfinite(landmarks[k]))]
        emb = self.embed_aligned(self.aligned(frame, landmarks[ok])) if ok else None
        out = np.full((len(landmarks), emb.shape[1] if emb is not None else (self.dim or 512)), np.nan, np.float32)
        if emb is not None:
            out[ok] = emb
        return out


class IdentityModels:
    """The embedder and its landmarker, loaded once."""

    def __init__(self, embedder: FaceEmbedder, landmarker: Landmarker):
        self.embedder = embedder
        self.landmarker = landmarker

    @classmethod
    def load(cls, recognition: str | os.PathLike | None, detector: str = "s3fd",
             detector_weights: str | os.PathLike | None = None, device: str = "cpu") -> IdentityModels:
        rec = resolve_recognition_weights(recognition)
        lm = resolve_landmark_weights(rec, detector, detector_weights)
        return cls(FaceEmbedder(rec, device), Landmarker(lm, device))

    def embed_boxes(self, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(K, D) embeddings of the faces in (K, 4+) boxes of ``frame`` (NaN rows where no landmarks)."""
        return self.embedder.embed(frame, self.landmarker.in_boxes(frame, boxes))


# ----------------------------------------------------------------------------------------------------------
# the faces of a video


def sample_detections(track, samples: int = EMBED_SAMPLES) -> dict[int, list[int]]:
    """Which detections to embed: ``{frame: [rows of track.faces[frame]]}``, up to ``samples`` per face track
    (:func:`lipsync_cli.faces.track.link_tracks` with its defaults), evenly spread from its first frame to its
    last."""
    from lipsync_cli.faces.track import link_tracks

    todo: dict[int, set[int]] = {}
    for ft in link_tracks(track.faces, cuts=track.cuts):
        k = len(ft.frames)
        picks = sorted({int(round(x)) for x in np.linspace(0, k - 1, min(samples, k))})
        for p in picks:
            todo.setdefault(ft.frames[p], set()).add(ft.rows[p])
    return {f: sorted(r) for f, r in sorted(todo.items())}


def embed_track(video: str | os.PathLike, track, models: IdentityModels, *, samples: int = EMBED_SAMPLES,
                info=None, progress: Callable[[int], None] | None = None,
                frame_of: Callable[[int], np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """Embed some detections of every face track of ``track`` (see :func:`sample_detections`) from the
    full-resolution frames of ``video``: ``{frame: (N, D) float32}`` aligned with ``track.faces[frame]``, NaN rows
    for the detections not embedded. ``frame_of(j)``: frame ``j``, from frames already decoded (the analysis pass,
    ``lipsync_cli.analysis``); without it, one pass over ``video`` reads them. ``progress(frames)`` as frames are
    read."""
    todo = sample_detections(track, samples)
    out: dict[int, np.ndarray] = {}
    if not todo:
        return out

    def embed(j: int, frame: np.ndarray) -> None:
        dets = track.faces[j]
        rows = todo[j]
        emb = models.embed_boxes(frame, dets[rows, :4])
        full = np.full((len(dets), emb.shape[1]), np.nan, np.float32)
        full[rows] = emb
        out[j] = full

    if frame_of is not None:
        for j in todo:
            embed(j, frame_of(j))
            if progress is not None:
                progress(1)
    else:
        from lipsync_cli.media.decode import FrameReader

        last = max(todo)
        with FrameReader(video, fps=None if info is not None and info.is_image else track.fps, info=info,
                         max_frames=last + 1) as reader:
            for j, frame in enumerate(reader):
                if progress is not None:
                    progress(1)
                if j in todo:
                    embed(j, frame)
                if j >= last:
                    break
    log.debug("embedded %d detections in %d frames", sum(len(r) for r in todo.values()), len(todo))
    return out


def face_track_embeddings(face_tracks, embeddings: dict[int, np.ndarray]) -> list[np.ndarray | None]:
    """The mean embedding of each face track (None when none of its detections was embedded)."""
    out = []
    for ft in face_tracks:
        vecs = [embeddings[f][r] for f, r in zip(ft.frames, ft.rows) if f in embeddings and r < len(embeddings[f])]
        out.append(mean_embedding(vecs))
    return out


def track_distances(track_embeddings: Sequence[np.ndarray | None], references: np.ndarray) -> np.ndarray:
    """(T, S) cosine distances of T face tracks to S references; inf for a track without an embedding."""
    refs = np.atleast_2d(np.asarray(references, np.float64))
    out = np.full((len(track_embeddings), len(refs)), np.inf)
    for t, e in enumerate(track_embeddings):
        if e is not None:
            out[t] = cosine_distance(e[None], refs)[0]
    return out


def assign_tracks(distances: np.ndarray, thresholds: Sequence[float]) -> list[int]:
    """The speaker of each face track: the reference nearest it when within that reference's threshold, else
    -1. ``distances``: (T, S); ``thresholds``: one per reference (S,)."""
    d = np.asarray(distances, np.float64).reshape(len(distances), -1)
    th = np.asarray(thresholds, np.float64)
    out = []
    for row in d:
        if not len(row):
            out.append(-1)
            continue
        s = int(np.argmin(row))
        out.append(s if np.isfinite(row[s]) and row[s] <= th[s] else -1)
    return out


# ----------------------------------------------------------------------------------------------------------
# references


def _read_image(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:  # formats OpenCV cannot read: through ffmpeg
        from lipsync_cli.media.decode import FrameReader

        with FrameReader(path) as reader:
            image = next(iter(reader))
    return image


def frame_at(video: str | os.PathLike, index: int | None = None, seconds: float | None = None) -> np.ndarray:
    """Frame ``index`` (or the frame at ``seconds``) of a video, full resolution; a still image's only frame."""
    from lipsync_cli.media.decode import FrameReader
    from lipsync_cli.media.probe import probe

    info = probe(video)
    if info.is_image:
        return _read_image(Path(video))
    if index is None:
        index = int(round(float(seconds or 0.0) * info.fps))
    if info.n_frames is not None and not 0 <= index < info.n_frames:
        raise BadOption(f"{video} has {info.n_frames} frames: there is no frame {index}"
                        + (f" at {seconds:g} s" if seconds is not None else ""))
    frame, seen = None, 0
    with FrameReader(video, info=info, max_frames=index + 1) as reader:
        for seen, frame in enumerate(reader, 1):  # noqa: B007 - the last one is wanted
            pass
    if frame is None or seen <= index:
        raise BadOption(f"{video} ends before frame {index}")
    return frame


def embed_reference(image: np.ndarray, models: IdentityModels, box: Sequence[float] | None = None,
                    what: str = "the reference", notify: Callable[[str], None] | None = None) -> np.ndarray:
    """(D,) embedding of the face in ``image``: the one nearest ``box`` when given (landmarks from a crop around
    it), else the largest face found in the whole image. Raises NoFaceError when there is none."""
    from lipsync_cli.errors import NoFaceError

    if box is not None:
        emb = models.embed_boxes(image, np.asarray([box], np.float64))[0]
        if not np.all(np.isfinite(emb)):
            raise NoFaceError(f"no face found at {tuple(int(v) for v in box)} in {what}",
                              "give a box around one face (X1 Y1 X2 Y2, a little larger than the face)")
        return emb
    dets, kps = models.landmarker.faces(image)
    if not len(dets):
        raise NoFaceError(f"no face found in {what}", "give a photo where the face is clearly visible")
    areas = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
    k = int(np.argmax(areas))
    if len(dets) > 1 and notify is not None:
        notify(f"{what} has {len(dets)} faces: using the largest")
    return models.embedder.embed(image, kps[k:k + 1])[0]
