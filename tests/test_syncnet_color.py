"""SyncNet_color lip-sync expert: upstream keys, numerics against ../shared/compat, kind checks, sync loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lipsync_cli.checkpoint import atomic_save, load_file
from lipsync_cli.errors import CheckpointMismatch
from lipsync_cli.models.syncnet import (
    SyncNetColor,
    clip_to_expert_input,
    cosine_bce,
    load_expert,
    sync_loss_from_generated,
)


def _close(got: torch.Tensor, ref: np.ndarray) -> None:
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=0, atol=tol)


@pytest.fixture(scope="module")
def ref(compat_dir):
    return {k: torch.from_numpy(v) for k, v in np.load(compat_dir / "syncnet_color_ref.npz").items()}


@pytest.fixture(scope="module")
def expert(fake_ckpt):
    return load_expert(fake_ckpt("syncnet_color"))


def test_keys_and_shapes_match_upstream(compat_dir):
    expected = [(k, list(s)) for k, s in json.loads((compat_dir / "syncnet_color_keys.json").read_text())]
    assert [(k, list(v.shape)) for k, v in SyncNetColor().state_dict().items()] == expected


def test_embeddings_cosine_and_bce_match_reference(expert, ref):
    assert not expert.training
    with torch.no_grad():
        a, v = expert(ref["mel"], ref["face"])
        assert a.shape == v.shape == (2, 512)
        _close(a, ref["audio_embedding"].numpy())
        _close(v, ref["face_embedding"].numpy())
        np.testing.assert_allclose(a.norm(dim=1).numpy(), 1.0, atol=1e-5)
        _close(torch.nn.functional.cosine_similarity(a, v), ref["cosine"].numpy())
        _close(cosine_bce(a, v, ref["y"]), ref["bce_loss"].numpy())


def test_generator_sync_loss_matches_reference(expert, ref):
    with torch.no_grad():
        loss = sync_loss_from_generated(expert, ref["mel"], ref["gen_clip"])
    _close(loss, ref["gen_clip_sync_loss"].numpy())


def test_clip_to_expert_input_is_lower_half_frame_major():
    g = torch.arange(2 * 3 * 5 * 96 * 96, dtype=torch.float32).reshape(2, 3, 5, 96, 96)
    x = clip_to_expert_input(g)
    assert x.shape == (2, 15, 48, 96)
    assert torch.equal(x[1, 3:6], g[1, :, 1, 48:])  # channels 3-5 = frame 1, rows 48-95


def test_sync_loss_gradient_lowers_the_loss(expert, ref):
    """The loss is differentiable w.r.t. the generated frames: one gradient step on g lowers it."""
    for p in expert.parameters():
        p.requires_grad_(False)
    mel = ref["mel"][:1]
    g = ref["gen_clip"][:1].clone().requires_grad_(True)
    opt = torch.optim.Adam([g], lr=0.02)
    loss0 = sync_loss_from_generated(expert, mel, g)
    loss0.backward()
    opt.step()
    with torch.no_grad():
        loss1 = sync_loss_from_generated(expert, mel, g)
    assert g.grad is not None and float(g.grad[:, :, :, :48].abs().sum()) == 0.0  # upper half unused
    assert float(loss1) < float(loss0.detach()) - 1e-3
    assert all(p.grad is None for p in expert.parameters())


def test_sync_loss_rejects_wrong_shapes(expert, ref):
    with pytest.raises(ValueError, match="clip"):
        sync_loss_from_generated(expert, ref["mel"], ref["gen_clip"][:, :, :4])


def test_load_expert_refuses_a_generator(fake_ckpt):
    with pytest.raises(CheckpointMismatch) as err:
        load_expert(fake_ckpt("wav2lip"))
    msg = str(err.value)
    assert "Wav2Lip generator" in msg and "SyncNet" in msg


def test_load_expert_accepts_dataparallel_prefix(fake_ckpt, tmp_path, expert):
    obj = load_file(fake_ckpt("syncnet_color"))
    prefixed = tmp_path / "dp_expert.pth"
    atomic_save({"state_dict": {f"module.{k}": v for k, v in obj["state_dict"].items()}}, prefixed)
    loaded = load_expert(prefixed).state_dict()
    assert loaded.keys() == expert.state_dict().keys()
    assert all(torch.equal(loaded[k], obj["state_dict"][k]) for k in loaded)
