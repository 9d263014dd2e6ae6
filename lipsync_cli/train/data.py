"""Datasets over Wav2Lip's preprocessed layout, with a per-clip mel cache and a (seed, step)-determined sample
order.

Layout: ``<data>/<speaker>/<clip>/<i>.jpg`` (face crop of frame ``i``, 0-based; frames without a face are
absent) and ``<data>/<speaker>/<clip>/audio.wav``; filelists hold ``speaker/clip`` lines relative to
``<data>``.

Sampling. Sample ``k`` of the run is a pure function of ``(seed, k)``: its clip comes from a seeded
permutation of the clips for the epoch ``k // n_clips`` (every clip once per epoch, like a shuffling sampler),
its frames from ``numpy.random.default_rng([seed, k])``. Step ``s`` of rank ``r`` out of ``w`` processes
reads samples ``(s * w + r) * B ... + B - 1``, so the ranks never share samples (what a DistributedSampler
gives) and a resumed run reads exactly the samples the uninterrupted run would have read, whatever the number
of DataLoader workers.

Bad samples (unreadable JPEG, missing frames, audio too short) are logged with their path and replaced by
another deterministic draw, at most ``MAX_ATTEMPTS`` times; then the loader raises instead of retrying
forever.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lipsync_cli.audio import mel_start
from lipsync_cli.constants import FACE_HALF, FACE_SIZE, MEL_WINDOW, SYNC_T
from lipsync_cli.errors import InputNotFound, LipsyncError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 10  # draws tried for one sample before the loader gives up
MEL_CACHE_CLIPS = 512  # mels kept in memory per worker (~150 kB for a 6 s clip)
MEL_CACHE_NAME = "mel.npy"


def fit_face(img: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """A face crop of any size as the generator's ``size`` x ``size`` input (INTER_AREA; unchanged when it already
    is). Prepared crops differ in size within a clip (the box follows the face), so everything that feeds them to
    a model (training here, ``lipsync eval benchmark``) resizes each one this way."""
    import cv2

    if img.shape[:2] == (size, size):
        return img
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


class BadSample(Exception):
    """One sample cannot be built (the message names the file); the dataset draws another."""


def read_filelist(path: str | os.PathLike) -> list[str]:
    """``speaker/clip`` lines of a filelist; blank lines and ``#`` comments skipped, LRS2's trailing fields
    dropped."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"filelist not found: {path}")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line.split()[0])
    if not out:
        raise LipsyncError(f"filelist {path} is empty", "list one speaker/clip per line")
    return out


def compute_mel(wav_path: Path) -> np.ndarray:
    """(80, T) float32 mel spectrogram of an audio file (16 kHz, Wav2Lip's parameters)."""
    from lipsync_cli.audio import load_audio, melspectrogram

    return np.ascontiguousarray(melspectrogram(load_audio(wav_path)), dtype=np.float32)


class ClipStore:
    """The clips of one filelist: lazily listed frames, cached mels, face reading. Safe to copy into
    workers."""

    def __init__(
        self,
        data_root: str | os.PathLike,
        names: list[str],
        fps: float = 25.0,
        mel_cache: bool = True,
        face_size: int = FACE_SIZE,
    ):
        self.root = Path(data_root)
        self.names = list(names)
        self.fps = float(fps)
        self.mel_cache = mel_cache
        self.face_size = face_size
        self._frames: dict[int, list[int]] = {}
        self._mels: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.names)

    def clip_dir(self, i: int) -> Path:
        return self.root / self.names[i]

    def frames(self, i: int) -> list[int]:
        """Sorted indices of the frames of clip ``i`` that have a face crop."""
        if i not in self._frames:
            d = self.clip_dir(i)
            if not d.is_dir():
                raise BadSample(f"clip folder missing: {d}")
            idx = sorted(int(p.stem) for p in d.glob("*.jpg") if p.stem.isdigit())
            self._frames[i] = idx
        return self._frames[i]

    def mel(self, i: int) -> np.ndarray:
        """(80, T) mel of clip ``i``, computed once: memory LRU, then ``mel.npy`` beside audio.wav when
        allowed."""
        if i in self._mels:
            self._mels.move_to_end(i)
            return self._mels[i]
        d = self.clip_dir(i)
        wav, cached = d / "audio.wav", d / MEL_CACHE_NAME
        mel = None
        if self.mel_cache and cached.is_file() and wav.is_file() and cached.stat().st_mtime >= wav.stat().st_mtime:
            try:
                mel = np.load(cached)
            except (OSError, ValueError):
                mel = None
        if mel is None:
            if not wav.is_file():
                raise BadSample(f"audio missing: {wav}")
            try:
                mel = compute_mel(wav)
            # noqa: BLE001  any decoding failure makes this one clip unusable, not the run
            except Exception as err:
                raise BadSample(f"cannot read audio {wav}: {err}") from None
            if self.mel_cache:
                self._write_cache(cached, mel)
        self._mels[i] = mel
        if len(self._mels) > MEL_CACHE_CLIPS:
            self._mels.popitem(last=False)
        return mel

    @staticmethod
    def _write_cache(path: Path, mel: np.ndarray) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
        try:
            np.save(tmp, mel)
            os.replace(tmp, path)
        except OSError:  # read-only dataset: the memory cache still works
            if tmp.exists():
                tmp.unlink(missing_ok=True)

    def read_face(self, i: int, frame: int) -> np.ndarray:
        """(S, S, 3) float32 BGR in [0, 1] face crop of ``frame`` of clip ``i``, resized to ``face_size``."""
        import cv2

        p = self.clip_dir(i) / f"{frame}.jpg"
        img = cv2.imread(str(p))
        if img is None:
            raise BadSample(f"cannot read image {p}")
        return fit_face(img, self.face_size).astype(np.float32) / 255.0

    def window(self, i: int, start: int) -> np.ndarray:
        """(T, S, S, 3) faces of frames ``start .. start + T - 1``."""
        return np.stack([self.read_face(i, f) for f in range(start, start + SYNC_T)])

    def valid_starts(self, i: int, mel_steps: int, lead: int = 0) -> np.ndarray:
        """Window starts ``s`` whose T frames all exist and whose mel windows (from frame s - lead to s + T -
        1 - lead for the generator, s for the expert) fit inside the audio."""
        frames = set(self.frames(i))
        out = []
        for s in sorted(frames):
            if s - lead < 0 or not all(f in frames for f in range(s, s + SYNC_T)):
                continue
            last = s + SYNC_T - 1 - lead if lead else s
            if mel_start(last, self.fps) + MEL_WINDOW > mel_steps:
                continue
            out.append(s)
        return np.asarray(out, dtype=np.int64)


class _SampleDataset(Dataset):
    """Maps a sample id to one training example; see the module docstring for the sampling rule."""

    lead = 0  # frames before the window start that the mel windows reach back to

    def __init__(self, store: ClipStore, seed: int):
        self.store = store
        self.seed = int(seed)
        self._starts: dict[int, np.ndarray] = {}

    def __len__(self) -> int:  # nominal: ids are unbounded, the batch sampler decides how many
        return len(self.store)

    def clip_for(self, sample_id: int) -> int:
        n = len(self.store)
        epoch, pos = divmod(int(sample_id), n)
        return int(np.random.default_rng([self.seed, epoch, 7]).permutation(n)[pos])

    def starts(self, i: int) -> np.ndarray:
        if i not in self._starts:
            self._starts[i] = self.store.valid_starts(i, self.store.mel(i).shape[1], self.lead)
        return self._starts[i]

    def __getitem__(self, sample_id: int):
        last_err = None
        for attempt in range(MAX_ATTEMPTS):
            rng = np.random.default_rng([self.seed, int(sample_id), attempt])
            clip = self.clip_for(sample_id) if attempt == 0 else int(rng.integers(len(self.store)))
            try:
                return self.build(clip, rng)
            except BadSample as err:
                last_err = err
                log.warning("skipping bad sample (%s): %s", self.store.names[clip], err)
        raise LipsyncError(
            f"{MAX_ATTEMPTS} bad samples in a row, last: {last_err}",
            "check the dataset (re-run `lipsync prepare`) and the filelist",
        )

    def build(self, clip: int, rng: np.random.Generator):
        raise NotImplementedError


class SyncDataset(_SampleDataset):
    """SyncNet expert examples: (faces (15, 48, 96), mel (1, 80, 16), y (1,)); y=1 in sync, y=0 off by at
    least ``neg_min_offset`` frames (the window moves, the audio stays)."""

    def __init__(self, store: ClipStore, seed: int, neg_min_offset: int = 5):
        super().__init__(store, seed)
        self.neg_min_offset = int(neg_min_offset)

    def pick(self, clip: int, rng: np.random.Generator) -> tuple[int, int, bool]:
        """(audio start frame s, face window start w, in sync): w == s, or |w - s| >= neg_min_offset."""
        starts = self.starts(clip)
        if len(starts) < 2:
            raise BadSample(f"too few usable frames in {self.store.clip_dir(clip)}")
        s = int(rng.choice(starts))
        positive = bool(rng.random() < 0.5)
        if positive:
            w = s
        else:
            far = starts[np.abs(starts - s) >= self.neg_min_offset]
            if len(far) == 0:
                raise BadSample(f"no window >= {self.neg_min_offset} frames away in {self.store.clip_dir(clip)}")
            w = int(rng.choice(far))
        return s, w, positive

    def build(self, clip: int, rng: np.random.Generator):
        s, w, positive = self.pick(clip, rng)
        mel = self.store.mel(clip)
        m = mel[:, mel_start(s, self.store.fps) : mel_start(s, self.store.fps) + MEL_WINDOW]  # (80, 16)
        faces = self.store.window(clip, w)[:, FACE_HALF:]  # (T, 48, 96, 3) lower halves
        x = faces.transpose(0, 3, 1, 2).reshape(SYNC_T * 3, FACE_SIZE - FACE_HALF, FACE_SIZE)  # (15, 48, 96)
        return (
            torch.from_numpy(np.ascontiguousarray(x)),
            torch.from_numpy(np.ascontiguousarray(m))[None],
            torch.tensor([1.0 if positive else 0.0]),
        )


class GeneratorDataset(_SampleDataset):
    """Generator examples (Wav2Lip):
    x (6, T, 96, 96): the true window with rows 48: zeroed, then a different window of the same clip
    (reference);
    indiv_mels (T, 1, 80, 16): frame t's mel window centred on it (starting 2 frames earlier);
    mel (1, 80, 16): the expert's window at the start frame; y (3, T, 96, 96): the true window. BGR in [0,
    1]."""

    lead = 2

    def build(self, clip: int, rng: np.random.Generator):
        starts = self.starts(clip)
        if len(starts) < 2:
            raise BadSample(f"too few usable frames in {self.store.clip_dir(clip)}")
        s = int(rng.choice(starts))
        others = starts[starts != s]
        w = int(rng.choice(others))
        mel = self.store.mel(clip)
        fps = self.store.fps
        window = self.store.window(clip, s).transpose(3, 0, 1, 2)  # (3, T, 96, 96)
        ref = self.store.window(clip, w).transpose(3, 0, 1, 2)  # (3, T, 96, 96)
        masked = window.copy()
        masked[:, :, FACE_HALF:] = 0.0
        x = np.concatenate([masked, ref], axis=0)  # (6, T, 96, 96)
        indiv = np.stack(
            [
                mel[:, mel_start(f, fps, self.lead) : mel_start(f, fps, self.lead) + MEL_WINDOW]
                for f in range(s, s + SYNC_T)
            ]
        )[:, None]  # (T, 1, 80, 16)
        m = mel[:, mel_start(s, fps) : mel_start(s, fps) + MEL_WINDOW][None]  # (1, 80, 16)
        return (
            torch.from_numpy(np.ascontiguousarray(x)),
            torch.from_numpy(np.ascontiguousarray(indiv)),
            torch.from_numpy(np.ascontiguousarray(m)),
            torch.from_numpy(np.ascontiguousarray(window)),
        )


class StepBatchSampler(Sampler):
    """Batches of sample ids for steps ``start_step .. end_step - 1`` of rank ``rank`` among ``world``
    processes."""

    def __init__(self, start_step: int, end_step: int, batch_size: int, rank: int = 0, world: int = 1):
        self.start_step, self.end_step = int(start_step), int(end_step)
        self.batch_size, self.rank, self.world = int(batch_size), int(rank), int(world)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self):
        b = self.batch_size
        for step in range(self.start_step, self.end_step):
            first = (step * self.world + self.rank) * b
            yield list(range(first, first + b))


class EvalBatchSampler(Sampler):
    """The fixed eval set: batches ``rank, rank + world, ...`` of ``n_batches`` batches of sample ids."""

    def __init__(self, n_batches: int, batch_size: int, rank: int = 0, world: int = 1):
        self.n_batches, self.batch_size, self.rank, self.world = n_batches, batch_size, rank, world

    def _mine(self) -> list[int]:
        return list(range(self.rank, self.n_batches, self.world))

    def __len__(self) -> int:
        return len(self._mine())

    def __iter__(self):
        for j in self._mine():
            yield list(range(j * self.batch_size, (j + 1) * self.batch_size))


def make_loader(dataset: Dataset, batch_sampler: Sampler, workers: int, pin_memory: bool = False):
    """A DataLoader that decodes JPEGs in ``workers`` processes (0: in this process)."""
    from torch.utils.data import DataLoader

    kwargs = {}
    if workers > 0:
        kwargs.update(prefetch_factor=4, persistent_workers=False)
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, pin_memory=pin_memory, **kwargs)
