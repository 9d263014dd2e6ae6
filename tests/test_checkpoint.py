"""Safe loading, kind detection and our checkpoint format (lipsync_cli/checkpoint.py)."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from lipsync_cli import checkpoint as ckpt
from lipsync_cli.errors import CheckpointError, CheckpointMismatch, InputNotFound

UPSTREAM = ["wav2lip", "syncnet_color", "disc_qual", "s3fd", "syncnet_v2", "gfpgan_v14"]


def _zeros_state_dict(compat_dir, name: str) -> dict:
    """A state dict with every key/shape of an upstream key list (meta tensors: keys are what matters)."""
    entries = json.loads((compat_dir / f"{name}_keys.json").read_text())
    return {k: torch.zeros(shape, device="meta") for k, shape in entries}


# --- kind detection ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", UPSTREAM)
def test_detect_kind_from_every_compat_key_list(compat_dir, name):
    sd = _zeros_state_dict(compat_dir, name)
    assert ckpt.detect_kind(sd) == name
    # the containers upstream uses: {'state_dict': ...}, DataParallel's 'module.' prefix
    assert ckpt.detect_kind({"state_dict": sd, "optimizer": None, "global_step": 3}) == name
    assert ckpt.detect_kind({f"module.{k}": v for k, v in sd.items()}) == name


def test_detect_kind_other_things(compat_dir):
    assert ckpt.detect_kind({"a.weight": torch.zeros(1)}) == "unknown"
    assert ckpt.detect_kind([1, 2, 3]) == "unknown"
    # ours: by the field, or by the keys when the field is missing
    sd = _zeros_state_dict(compat_dir, "s3fd")
    ours = {"format": ckpt.FORMAT_NAME, "format_version": 1, "kind": None, "arch": None, "state_dict": sd}
    assert ckpt.detect_kind(ours) == "s3fd"
    assert ckpt.detect_kind({**ours, "arch": "lpips_attn_wav2lip"}) == "lpips_attn_wav2lip"


@pytest.mark.parametrize("arch", ["attn_wav2lip", "lpips_attn_wav2lip"])
def test_detect_kind_raw_state_dicts_of_our_other_generators(arch):
    from lipsync_cli.models import build_generator

    try:
        model = build_generator(arch)
    except ImportError:
        pytest.skip(f"{arch} is not implemented in this tree yet")
    sd = model.state_dict()
    assert ckpt.detect_kind(sd) == arch
    assert ckpt.detect_kind({"state_dict": {f"module.{k}": v for k, v in sd.items()}}) == arch


def test_every_file_matches_exactly_one_registered_signature(compat_dir):
    """The networks' own signatures do not overlap: every upstream key list and every architecture's state dict
    matches one, its own; the generator kinds are the model registry's architectures."""
    from lipsync_cli import checkpoint_kinds as kinds
    from lipsync_cli.models import ARCHS, build_generator

    key_sets = {name: set(_zeros_state_dict(compat_dir, name)) for name in UPSTREAM}
    for arch in ARCHS:
        with torch.device("meta"):
            key_sets[arch] = set(build_generator(arch).state_dict())
    for name, keys in key_sets.items():
        matching = [k for k, sig in kinds.signatures().items() if sig.matches(frozenset(keys))]
        assert matching == [name], name
    assert set(kinds.generator_kinds()) == set(ARCHS) == set(ckpt.GENERATOR_KINDS)
    assert set(ckpt.KIND_NAMES) == {*key_sets, "unknown"}


def test_a_network_registers_its_kind_without_the_loader_knowing_it(tmp_path, monkeypatch):
    """A new network only registers its signature: detect_kind, KIND_NAMES and the wrong-kind message know it."""
    from lipsync_cli import checkpoint_kinds as kinds

    monkeypatch.setattr(kinds, "_REGISTRY", dict(kinds.signatures()))  # undone after the test
    kinds.register_kind(kinds.KindSignature("toy", "Toy network", requires=("toy_body.", "toy_head.")))
    sd = {"toy_body.0.weight": torch.zeros(2), "toy_head.weight": torch.zeros(1)}
    assert ckpt.detect_kind(sd) == "toy" and ckpt.detect_kind({"state_dict": sd}) == "toy"
    assert ckpt.detect_kind({"toy_body.0.weight": torch.zeros(2)}) == "unknown"  # a required prefix is missing
    assert ckpt.KIND_NAMES["toy"] == "Toy network"
    torch.save(sd, tmp_path / "toy.pth")
    with pytest.raises(CheckpointMismatch, match="found Toy network, this needs SyncNet lip-sync expert"):
        ckpt.load_network(tmp_path / "toy.pth", torch.nn.Linear(1, 1), "syncnet_color", "hint")


def test_the_loader_names_no_networks_keys():
    """checkpoint.py / checkpoint_io.py hold no network's key prefixes: those live with the networks."""
    from pathlib import Path

    prefixes = ("face_encoder.", "audio_encoder.", "face_encoder_blocks.", "face_decoder_blocks.", "output_block.",
                "face_encoder_stages.", "align_modules.", "binary_pred.", "netcnnaud.", "netcnnlip.",
                "conv3_3_norm_mbox_conf", ".cbam.")
    pkg = Path(ckpt.__file__).parent
    for name in ("checkpoint.py", "checkpoint_io.py"):
        path = pkg / name
        if path.is_file():
            src = path.read_text()
            assert not [p for p in prefixes if f'"{p}' in src or f"'{p}" in src], name


@pytest.mark.parametrize("name", UPSTREAM)
def test_fake_upstream_checkpoints_load_and_are_recognised(fake_ckpt, name):
    obj = ckpt.load_file(fake_ckpt(name))
    assert ckpt.detect_kind(obj) == name
    assert ckpt.expect_kind("x", obj, (name,)) == name


def test_wrong_kind_names_both(fake_ckpt):
    path = fake_ckpt("s3fd")
    with pytest.raises(CheckpointMismatch) as info:
        ckpt.load_generator(path)
    msg = str(info.value)
    assert "S3FD face detector" in msg and "Wav2Lip generator" in msg and str(path) in msg
    with pytest.raises(CheckpointMismatch, match="SyncNet lip-sync expert"):
        ckpt.expect_kind(path, ckpt.load_file(fake_ckpt("syncnet_color")), ("disc_qual",))


# --- safe loading ------------------------------------------------------------------------------------------

class _Evil:
    """Unpickling this calls open(marker, 'w'): it creates the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    # the payload is real: a plain unpickle does create the marker
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Evil(str(proof)))).close()
    assert proof.exists()

    marker = tmp_path / "pwned"
    zip_file = tmp_path / "evil_zip.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Evil(str(marker))}, zip_file)
    raw = tmp_path / "evil_raw.pkl"
    with open(raw, "wb") as f:
        pickle.dump(_Evil(str(marker)), f)
    legacy = tmp_path / "evil_legacy.pth"
    torch.save(_Evil(str(marker)), legacy, _use_new_zipfile_serialization=False)
    for path in (zip_file, raw, legacy):
        with pytest.raises(CheckpointError, match="refusing to load"):
            ckpt.load_file(path)
        with pytest.raises(CheckpointError):
            ckpt.load_generator(path)
        assert not marker.exists(), f"{path.name} ran its payload"


def test_missing_corrupt_and_truncated_files(tmp_path, fake_ckpt):
    with pytest.raises(InputNotFound):
        ckpt.load_file(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError):
        ckpt.load_file(junk)
    data = fake_ckpt("disc_qual").read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated|cannot read"):
        ckpt.load_file(cut)
    st = tmp_path / "cut.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1")
    with pytest.raises(CheckpointError):
        ckpt.load_file(st)


def test_atomic_save_leaves_target_and_no_temp_on_failure(tmp_path):
    target = tmp_path / "ck.pt"
    ckpt.atomic_save({"a": torch.ones(2)}, target)
    with pytest.raises(Exception):  # noqa: B017 (a lambda cannot be pickled: any error will do)
        ckpt.atomic_save({"a": lambda: 0}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]
    assert torch.equal(ckpt.load_file(target)["a"], torch.ones(2))


# --- our format: training checkpoints, export, import ------------------------------------------------------

@pytest.fixture(scope="module")
def ref_inputs(compat_dir):
    ref = np.load(compat_dir / "wav2lip_ref.npz")
    # one sample of the reference batch keeps the CPU cost down
    return torch.from_numpy(ref["mel"][:1]), torch.from_numpy(ref["face"][:1]), ref["out"][:1]


def _run(model, mel, face) -> torch.Tensor:
    with torch.no_grad():
        return model(mel, face)  # (B, 3, 96, 96)


@pytest.fixture(scope="module")
def upstream_out(fake_ckpt, ref_inputs):
    """Output of the fake upstream wav2lip.pth, checked against the upstream code's reference output."""
    mel, face, ref_out = ref_inputs
    out = _run(ckpt.load_generator(fake_ckpt("wav2lip")), mel, face)
    tol = 1e-4 * max(1.0, float(np.abs(ref_out).max()))  # manifest tolerance for network outputs
    assert np.abs(out.numpy() - ref_out).max() <= tol
    return out


def test_import_export_round_trips_give_identical_outputs(tmp_path, fake_ckpt, ref_inputs, upstream_out):
    mel, face, _ = ref_inputs
    upstream = fake_ckpt("wav2lip")
    imported = tmp_path / "ours.pt"
    saved = ckpt.import_checkpoint(upstream, imported)
    assert saved["arch"] == "wav2lip" and saved["format_version"] == ckpt.FORMAT_VERSION
    exported_st = tmp_path / "infer.safetensors"
    exported_pt = tmp_path / "infer.pt"
    ckpt.export_checkpoint(imported, exported_st)
    ckpt.export_checkpoint(upstream, exported_pt)
    for path in (imported, exported_st, exported_pt):
        model = ckpt.load_generator(path)  # no arch: ours say what they are
        assert model.arch == "wav2lip"
        assert torch.equal(_run(model, mel, face), upstream_out), path.name

    from safetensors import safe_open

    with safe_open(str(exported_st), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == ckpt.FORMAT_NAME and meta["arch"] == "wav2lip"
    assert json.loads(meta["config"]) == {}


def test_training_checkpoint_keeps_state_and_export_strips_it(tmp_path, fake_ckpt, ref_inputs, upstream_out):
    mel, face, _ = ref_inputs
    model = ckpt.load_generator(fake_ckpt("wav2lip"))
    with torch.no_grad():
        model.output_block[1].bias.add_(0.25)  # stands in for a training step
    head = model.output_block[1].bias
    # what torch.optim.Adam(...).state_dict() holds after a step (built by hand: creating a torch optimizer
    # costs seconds of imports here, and this test is about the container surviving the safe load)
    opt_state = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.full_like(head, 1e-4),
                               "exp_avg_sq": torch.full_like(head, 1e-8)}},
                 "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                                   "amsgrad": False, "foreach": None, "params": [0]}]}
    expected = _run(model, mel, face)
    assert not torch.equal(expected, upstream_out)  # the step did change the weights
    train_ck = ckpt.make_checkpoint(model, optimizer=opt_state, scaler={"scale": 65536.0}, step=7,
                                    epoch=1, train_config={"lr": 1e-3, "batch_size": 2},
                                    metrics={"l1": [0.5, 0.4]})
    path = tmp_path / "run" / "step_7.pt"
    ckpt.atomic_save(train_ck, path)

    back = ckpt.load_file(path)
    assert back["step"] == 7 and back["epoch"] == 1 and back["metrics"] == {"l1": [0.5, 0.4]}
    assert back["train_config"]["batch_size"] == 2
    loaded = ckpt.load_generator(path)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg_sq"], opt_state["state"][0]["exp_avg_sq"])
    assert torch.equal(_run(loaded, mel, face), expected)

    small = tmp_path / "small.pt"
    ckpt.export_checkpoint(path, small)
    assert set(ckpt.load_file(small)) == {"format", "format_version", "kind", "arch", "config", "state_dict",
                                          "mel_lead"}
    assert ckpt.load_file(small)["mel_lead"] == 2  # no lead stored in the source: our legacy 2, written out
    assert torch.equal(_run(ckpt.load_generator(small), mel, face), expected)


def test_import_non_generators_and_arch_checks(tmp_path, fake_ckpt):
    src = fake_ckpt("s3fd")
    out = tmp_path / "s3fd_ours.pt"
    ckpt.import_checkpoint(src, out)
    ours = ckpt.load_file(out)
    assert ours["kind"] == "s3fd" and ckpt.detect_kind(ours) == "s3fd"
    original = ckpt.unwrap_state_dict(ckpt.load_file(src))
    assert ours["state_dict"].keys() == original.keys()
    assert all(torch.equal(ours["state_dict"][k], original[k]) for k in original)
    with pytest.raises(CheckpointMismatch, match="--arch wav2lip"):
        ckpt.import_checkpoint(src, tmp_path / "x.pt", arch="wav2lip")
    assert not (tmp_path / "x.pt").exists()
    weird = tmp_path / "weird.pt"
    torch.save({"foo.weight": torch.zeros(3)}, weird)
    with pytest.raises(CheckpointError, match="cannot tell"):
        ckpt.import_checkpoint(weird, tmp_path / "y.pt")
    with pytest.raises(CheckpointMismatch, match="--arch lpips_attn_wav2lip"):
        ckpt.load_generator(fake_ckpt("wav2lip"), arch="lpips_attn_wav2lip")


def test_plain_safetensors_state_dict_loads(tmp_path, fake_ckpt):
    from safetensors.torch import save_file

    sd = ckpt.unwrap_state_dict(ckpt.load_file(fake_ckpt("disc_qual")))
    path = tmp_path / "disc.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    obj = ckpt.load_file(path)
    assert ckpt.detect_kind(obj) == "disc_qual"
    renamed = tmp_path / "disc.bin"  # recognised by its header, not only by its suffix
    os.replace(path, renamed)
    assert ckpt.detect_kind(ckpt.load_file(renamed)) == "disc_qual"


def test_cli_import_export(tmp_path, fake_ckpt, ref_inputs, upstream_out):
    from typer.testing import CliRunner

    from lipsync_cli.cli import app

    mel, face, _ = ref_inputs
    runner = CliRunner()
    ours = tmp_path / "ours.pt"
    res = runner.invoke(app, ["weights", "import", str(fake_ckpt("wav2lip")), str(ours)])
    assert res.exit_code == 0, res.output
    assert "Wav2Lip generator" in res.output
    st = tmp_path / "ours.safetensors"
    res = runner.invoke(app, ["weights", "export", str(ours), str(st)])
    assert res.exit_code == 0, res.output
    assert torch.equal(_run(ckpt.load_generator(st), mel, face), upstream_out)


def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path):
    """A text file passed as weights is 'not a weight file', not mistaken for a malicious pickle."""
    notes = tmp_path / "keys.json"
    notes.write_text('[["conv1_1.weight", [64, 3, 3, 3]]]')
    with pytest.raises(CheckpointError, match="not a PyTorch or safetensors weight file"):
        ckpt.load_file(notes)
