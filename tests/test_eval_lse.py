"""SyncNet v2 numerics, MFCC, and LSE-D / LSE-C against a literal transcription of the reference
evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lipsync_cli.evaluate import lse as L
from lipsync_cli.evaluate.mfcc import mel_filterbank, mfcc


@pytest.fixture(scope="module")
def syncnet(fake_ckpt):
    from lipsync_cli.models.syncnet_v2 import load_syncnet_v2

    return load_syncnet_v2(fake_ckpt("syncnet_v2"))


# ------------------------------------------------------------------------------------------------------------
# the network


def test_syncnet_v2_matches_upstream_outputs(syncnet, compat_dir):
    ref = np.load(compat_dir / "syncnet_v2_ref.npz")
    video = torch.from_numpy(ref["video_u8"].astype(np.float32))  # (1, 3, 5, 224, 224)
    with torch.no_grad():
        got = {
            "aud_out": syncnet.forward_aud(torch.from_numpy(ref["audio"])).numpy(),
            "lip_out": syncnet.forward_lip(video).numpy(),
            "lipfeat_out": syncnet.forward_lipfeat(video).numpy(),
        }
    for key, out in got.items():
        want = ref[key]
        assert out.shape == want.shape
        assert np.abs(out - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), key


def test_syncnet_v2_file_has_no_bn_counters_and_loads(fake_ckpt):
    from lipsync_cli.checkpoint import load_file

    sd = load_file(fake_ckpt("syncnet_v2"))
    assert not any(k.endswith("num_batches_tracked") for k in sd)  # as released
    assert len(sd) == 88


def test_syncnet_v2_refuses_other_weights(fake_ckpt):
    from lipsync_cli.errors import CheckpointMismatch
    from lipsync_cli.models.syncnet_v2 import load_syncnet_v2

    with pytest.raises(CheckpointMismatch, match="SyncNet v2"):
        load_syncnet_v2(fake_ckpt("syncnet_color"))


# ------------------------------------------------------------------------------------------------------------
# MFCC


@pytest.mark.parametrize("n", [1, 399, 400, 401, 560, 16000 + 37])
def test_mfcc_matches_python_speech_features(n):
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.RandomState(n)
    x = (rng.randn(n) * 3000).astype(np.int16)
    x[: n // 3] = 0  # exact silence: the eps branch of the log
    want = psf.mfcc(x, 16000)
    got = mfcc(x, 16000)
    assert got.shape == want.shape == (1 if n <= 400 else 1 + math.ceil((n - 400) / 160), 13)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_mel_filterbank_matches_python_speech_features():
    pytest.importorskip("python_speech_features")
    from python_speech_features.base import get_filterbanks

    np.testing.assert_array_equal(mel_filterbank(26, 512, 16000), get_filterbanks(26, 512, 16000, 0, None))


# ------------------------------------------------------------------------------------------------------------
# LSE: the reference, transcribed literally (per-window loops, python_speech_features, list of distance rows)


def reference_lse(model, frames224: np.ndarray, pcm16: np.ndarray, vshift: int = 15, batch_size: int = 20):
    """SyncNetInstance.evaluate's computation, step by step, on already-decoded frames and int16 audio."""
    import python_speech_features

    im = np.stack(list(frames224), axis=3)  # (224, 224, 3, T)
    im = np.expand_dims(im, axis=0)  # (1, 224, 224, 3, T)
    im = np.transpose(im, (0, 3, 4, 1, 2))  # (1, 3, T, 224, 224)
    imtv = torch.from_numpy(im.astype(float)).float()
    mf = python_speech_features.mfcc(pcm16, 16000)  # (N, 13)
    mf = np.stack([np.array(c) for c in zip(*mf, strict=True)])  # (13, N)
    cct = torch.from_numpy(np.expand_dims(np.expand_dims(mf, 0), 0).astype(float)).float()  # (1, 1, 13, N)
    min_length = min(len(frames224), math.floor(len(pcm16) / 640))
    lastframe = min_length - 5
    im_feat, cc_feat = [], []
    with torch.no_grad():
        for i in range(0, lastframe, batch_size):
            rng_ = range(i, min(lastframe, i + batch_size))
            im_feat.append(model.forward_lip(torch.cat([imtv[:, :, v : v + 5] for v in rng_], 0)))
            cc_feat.append(model.forward_aud(torch.cat([cct[:, :, :, v * 4 : v * 4 + 20] for v in rng_], 0)))
    im_feat, cc_feat = torch.cat(im_feat, 0), torch.cat(cc_feat, 0)
    win = vshift * 2 + 1
    ccp = torch.nn.functional.pad(cc_feat, (0, 0, vshift, vshift))
    dists = [
        torch.nn.functional.pairwise_distance(im_feat[[i], :].repeat(win, 1), ccp[i : i + win, :])
        for i in range(len(im_feat))
    ]
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    return {
        "offset": int(vshift - minidx),
        "conf": float(torch.median(mdist) - minval),
        "minval": float(minval),
        "mdist": mdist.numpy(),
        "dists": torch.stack(dists).numpy(),
    }


def _clip(T: int, extra_samples: int, seed: int):
    rng = np.random.RandomState(seed)
    frames = rng.randint(0, 256, (T, 224, 224, 3)).astype(np.uint8)
    pcm = (rng.randn(T * 640 + extra_samples) * 2500).astype(np.int16)
    return frames, pcm


@pytest.mark.parametrize(("T", "extra", "batch"), [(26, 123, 7), (14, -700, 20)])
def test_lse_identical_to_reference(syncnet, T, extra, batch):
    pytest.importorskip("python_speech_features")
    frames, pcm = _clip(T, extra, seed=T)
    want = reference_lse(syncnet, frames, pcm)
    lip, aud = L.sync_embeddings(syncnet, frames, pcm, batch_size=batch)  # a different batching on purpose
    dists = L.offset_distances(lip, aud, 15, chunk=5)
    got = L.scores_from_distances(dists, 15)
    assert got.n_windows == min(T, len(pcm) // 640) - 5 == want["dists"].shape[0]
    np.testing.assert_allclose(dists.numpy(), want["dists"], rtol=1e-4)
    np.testing.assert_allclose(got.curve, want["mdist"], rtol=1e-4)
    assert got.lse_d == pytest.approx(want["minval"], rel=1e-4)
    assert got.lse_c == pytest.approx(want["conf"], rel=1e-4, abs=1e-4 * want["minval"])
    assert got.offset == want["offset"]


def test_too_short_clip_is_refused(syncnet):
    from lipsync_cli.errors import AudioTooShort

    frames, pcm = _clip(5, 0, seed=1)
    with pytest.raises(AudioTooShort, match="at least 6 frames"):
        L.score_clip(syncnet, frames, pcm)
    frames, pcm = _clip(30, -26 * 640, seed=2)  # 4 frames of audio only
    with pytest.raises(AudioTooShort):
        L.score_clip(syncnet, frames, pcm)


# ------------------------------------------------------------------------------------------------------------
# offsets: delaying the audio by k frames moves the reported offset by k


def test_delay_shifts_distance_columns_exactly(syncnet):
    """Audio delayed by k frames (640k samples = 4k MFCC steps): row i, column c of the shifted clip's
    distance
    matrix equals column c - k of the original, wherever both compare real (non-padding) audio windows."""
    k = 3
    frames, pcm = _clip(24, 0, seed=7)
    delayed = np.concatenate([np.zeros(640 * k, np.int16), pcm])
    d0 = L.offset_distances(*L.sync_embeddings(syncnet, frames, pcm)).numpy()  # (19, 31)
    d1 = L.offset_distances(*L.sync_embeddings(syncnet, frames, delayed)).numpy()
    W = d0.shape[0]
    checked = 0
    for i in range(W):
        for c in range(k, 31):
            j = i + c - 15  # audio window in the delayed clip
            if k + 1 <= j < W and 0 <= j - k < W - 1:  # windows whose MFCC frames are not edge-affected
                np.testing.assert_allclose(d1[i, c], d0[i, c - k], rtol=1e-4)
                checked += 1
    assert checked > 150
    assert not np.allclose(d1, d0, rtol=1e-3)  # and the shift is not an identity


class OracleSync(torch.nn.Module):
    """A stand-in SyncNet that can see sync: the lip embedding is the mean brightness of each of the 5 frames,
    the audio embedding the frame-wise mean of the MFCC log energy (mapped to brightness by the same affine
    map
    the test clip was drawn with). In sync, the two agree exactly."""

    def forward_lip(self, video):  # (B, 3, 5, 224, 224) -> (B, 5)
        return video.mean(dim=(1, 3, 4)) / 255.0

    def forward_aud(self, mf):  # (B, 1, 13, 20) -> (B, 5)
        return to_brightness(mf[:, 0, 0].reshape(len(mf), 5, 4).mean(-1)) / 255.0


def to_brightness(log_energy):
    return (log_energy - 10.0) * 12.0


def _oracle_clip(T: int, seed: int):
    """Audio of random loudness per frame, and frames whose brightness encodes that loudness."""
    rng = np.random.RandomState(seed)
    amp = rng.uniform(200, 8000, T).repeat(640)
    pcm = (rng.randn(T * 640) * amp).astype(np.int16)
    e = mfcc(pcm)[:, 0]  # (4T - 1,) log energy per MFCC step
    e = np.concatenate([e, e[-1:]])[: 4 * T].reshape(T, 4).mean(1)
    frames = np.stack([np.full((224, 224, 3), 0, np.float32) + to_brightness(v) for v in e])
    return frames, pcm


@pytest.mark.parametrize("k", [2, 5, -4])
def test_reported_offset_moves_by_the_delay(k):
    frames, pcm = _oracle_clip(45, seed=3)
    model = OracleSync()
    base = L.score_clip(model, frames, pcm)
    assert base.offset == 0 and base.lse_d < 1e-3 and base.lse_c > 0.05
    shifted = np.concatenate([np.zeros(640 * k, np.int16), pcm]) if k > 0 else pcm[640 * -k :]
    moved = L.score_clip(model, frames, shifted)
    assert moved.offset == -k  # audio lagging the lips by k frames reads as offset -k


# ------------------------------------------------------------------------------------------------------------
# track mode: the face tracks are the dub's (faces/track.py), and they never cross a shot cut


def test_face_tracks_do_not_cross_a_cut():
    a = np.array([[10, 10, 50, 50, 0.9]])
    faces = [a] * 4 + [np.zeros((0, 5))] + [a] * 5  # one face at one place, missed once
    assert [t[0].tolist() for t in L.face_tracks(faces)] == [[0, 1, 2, 3, 5, 6, 7, 8, 9]]
    assert [t[0].tolist() for t in L.face_tracks(faces, cuts=[7])] == [[0, 1, 2, 3, 5, 6], [7, 8, 9]]
    # the reference's rule is IoU > 0.5 alone: a face that moved by half its size starts a new track
    moved = [a] * 3 + [a + np.array([[20, 0, 20, 0, 0]])] * 3
    assert [t[0].tolist() for t in L.face_tracks(moved)] == [[0, 1, 2], [3, 4, 5]]


class _FixedFace:
    """A face detector that finds one face at the same place in every frame."""

    def detect(self, frames):
        return [np.array([[40, 30, 120, 100, 0.9]], np.float32) for _ in frames]


def test_track_crops_stop_at_a_shot_cut(tmp_path):
    from tests.synth import run_ffmpeg

    clip = tmp_path / "cut.mp4"  # 20 frames of one shot, 30 of another, at 25 fps
    run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=0.8",
                "-f", "lavfi", "-i", "color=c=navy:size=160x120:rate=25:duration=1.2",
                "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-c:v", "libx264",
                "-pix_fmt", "yuv420p", str(clip)])
    first, crops = L.track_crops(clip, _FixedFace(), L.LSEOptions(det_size=160))
    assert (first, len(crops)) == (20, 30)  # the longer shot's track, not one track over the cut
    assert crops.shape[1:] == (224, 224, 3)
