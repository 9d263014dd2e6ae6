"""Wav2Lip generator: exact upstream key layout and numerics against ../shared/compat (fake weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lipsync_cli.checkpoint import atomic_save, detect_kind, load_file, load_generator, make_checkpoint
from lipsync_cli.models import build_generator
from lipsync_cli.models.wav2lip import Wav2Lip, fold_time, unfold_time


def _tol(ref: np.ndarray) -> float:
    return 1e-4 * max(1.0, float(np.abs(ref).max()))


@pytest.fixture(scope="module")
def ref(compat_dir):
    return dict(np.load(compat_dir / "wav2lip_ref.npz"))


@pytest.fixture(scope="module")
def net(fake_ckpt):
    return load_generator(fake_ckpt("wav2lip"))


def test_state_dict_keys_and_shapes_match_upstream(compat_dir):
    expected = [(k, list(s)) for k, s in json.loads((compat_dir / "wav2lip_keys.json").read_text())]
    got = [(k, list(v.shape)) for k, v in Wav2Lip().state_dict().items()]
    assert got == expected  # same names, same shapes, same order


def test_fake_checkpoint_detected_and_loaded_strictly(fake_ckpt, net):
    obj = load_file(fake_ckpt("wav2lip"))
    assert detect_kind(obj) == "wav2lip"
    assert isinstance(net, Wav2Lip) and not net.training and net.arch == "wav2lip"
    sd = {k[len("module."):]: v for k, v in obj["state_dict"].items()}
    for k, v in net.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_output_matches_upstream_reference(net, ref):
    mel, face = torch.from_numpy(ref["mel"]), torch.from_numpy(ref["face"])
    with torch.no_grad():
        out = net(mel, face)
        emb = net.encode_audio(mel)
    assert out.shape == (2, 3, 96, 96) and out.dtype == torch.float32
    assert np.abs(out.numpy() - ref["out"]).max() <= _tol(ref["out"])
    assert np.abs(emb.numpy() - ref["audio_embedding"]).max() <= _tol(ref["audio_embedding"])


def test_sequence_form_folds_time_major_like_upstream(net, ref):
    # compat README: input (1, T=2, ...) made of the 2 reference samples gives out_seq[0] == out.permute(1, 0)
    mel_seq = torch.from_numpy(ref["mel"]).unsqueeze(0)  # (1, 2, 1, 80, 16)
    face_seq = torch.from_numpy(ref["face"]).permute(1, 0, 2, 3).unsqueeze(0)  # (1, 6, 2, 96, 96)
    with torch.no_grad():
        out_seq = net(mel_seq, face_seq)
    assert out_seq.shape == (1, 3, 2, 96, 96)
    want = np.transpose(ref["out"], (1, 0, 2, 3))  # (3, 2, 96, 96)
    assert np.abs(out_seq[0].numpy() - want).max() <= _tol(ref["out"])


def test_fold_time_order_is_time_major():
    b, t = 2, 3
    face = torch.arange(b * t, dtype=torch.float32).reshape(b, 1, t, 1, 1).expand(b, 6, t, 4, 4)
    mel = torch.arange(b * t, dtype=torch.float32).reshape(b, t, 1, 1, 1).expand(b, t, 1, 80, 16)
    m, f, batch = fold_time(mel, face)
    assert batch == b and f.shape == (6, 6, 4, 4) and m.shape == (6, 1, 80, 16)
    # row t*B + b is frame t of clip b, whose value was b*T + t
    assert [int(f[i, 0, 0, 0]) for i in range(6)] == [0, 3, 1, 4, 2, 5]
    assert [int(m[i, 0, 0, 0]) for i in range(6)] == [0, 3, 1, 4, 2, 5]
    assert torch.equal(unfold_time(f[:, :3], batch), face[:, :3])


def test_bf16_autocast_on_cpu_stays_close(net, ref):
    mel, face = torch.from_numpy(ref["mel"]), torch.from_numpy(ref["face"])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(mel, face)
    assert out.shape == (2, 3, 96, 96)
    err = (out.float().numpy() - ref["out"])
    assert np.isfinite(err).all()
    assert np.abs(err).max() < 0.05 and np.abs(err).mean() < 0.01


def test_checkpoint_round_trip_without_arch(net, tmp_path, ref):
    path = tmp_path / "ours.pth"
    atomic_save(make_checkpoint(net, step=7), path)
    back = load_generator(path)
    assert type(back) is Wav2Lip and back.arch == "wav2lip"
    mel, face = torch.from_numpy(ref["mel"]), torch.from_numpy(ref["face"])
    with torch.no_grad():
        assert torch.equal(back(mel, face), net(mel, face))


def test_registry_builds_wav2lip():
    m = build_generator("wav2lip")
    assert isinstance(m, Wav2Lip) and m.arch == "wav2lip" and m.config == {}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_forward_rows_equal_the_whole_forward_bit_for_bit(net, ref, precision):
    # the dub computes only the rows its blend reads (blend.first_row_read): they must be the whole face's rows
    from lipsync_cli.render import prepare_for_inference

    model = prepare_for_inference(net, "cpu", precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    mel = torch.from_numpy(ref["mel"]).to(dtype)
    face = torch.from_numpy(ref["face"]).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        whole = model(mel, face)
        for first_row in (1, 5, 17, 34, 35, 48, 95):
            rows = model.forward_rows(mel, face, first_row)
            assert rows.shape == (2, 3, 96 - first_row, 96)
            assert torch.equal(rows, whole[:, :, first_row:]), first_row
        assert torch.equal(model.forward_rows(mel, face, 0), whole)
