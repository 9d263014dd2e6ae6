"""Shared fixtures: the ../shared data beside the checkout (skip when absent) and fake upstream checkpoints."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

# A suite started in the background of a non-interactive shell (`pytest &`) inherits SIGINT ignored, and so would
# every lipsync it starts: the Ctrl-C tests would then test nothing. Give the suite Python's usual handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Under pytest-xdist (the suite runs `-n auto --dist loadfile`, see pyproject.toml) each worker gets its share of
# the cores as math threads, and so do the lipsync processes it starts: oversubscribed OpenMP threads spin and made
# the training tests 3-4x slower than alone.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Hermetic caches: weights a developer has downloaded (``~/.cache/lipsync``, ``$LIPSYNC_HOME``, insightface's packs)
# must not change what the tests see ("not found" tests would find them). Every worker and every lipsync it starts
# looks in an empty folder of its own, removed at exit; a test that wants a cache sets its own.
_CACHE_HOME = tempfile.mkdtemp(prefix="lipsync-test-home-")
atexit.register(shutil.rmtree, _CACHE_HOME, True)
os.environ["LIPSYNC_HOME"] = os.path.join(_CACHE_HOME, "lipsync")
os.environ["INSIGHTFACE_HOME"] = os.path.join(_CACHE_HOME, "insightface")

# The files that take longest go first, so that no worker is left alone with one of them at the end.
LONGEST_FIRST = ["test_train.py", "test_train_steps.py", "test_train_dist.py", "test_train_run.py", "test_batch.py",
                 "test_musetalk_dub.py",
                 "test_speakers.py", "test_output.py", "test_dub_real.py", "test_eval_cli.py", "test_train_lead.py",
                 "test_dub.py", "test_studio_segments.py", "test_attn_models.py", "test_dub_archs.py",
                 "test_studio_silence.py", "test_signals.py", "test_enhance.py"]


@pytest.fixture(scope="session", autouse=True)
def _remove_temporary_files_after_a_green_run(request, tmp_path_factory):
    """The session fixtures write fake checkpoints and models (about 3 GB per worker): after a session in which no
    test failed, this worker's temporary tree goes; after a red one, pytest keeps the failed tests' folders."""
    yield
    if request.session.testsfailed == 0:
        import shutil

        shutil.rmtree(tmp_path_factory.getbasetemp(), ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept


REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIPSYNC_SHARED", REPO.parent / "shared"))
COMPAT = SHARED / "compat"
TESTMEDIA = SHARED / "testmedia"
DETECTORS = SHARED / "detectors"
SCRFD_ONNX = DETECTORS / "scrfd_2.5g_bnkps.onnx"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is absent)")
    return path


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    return _require(COMPAT)


@pytest.fixture(scope="session")
def testmedia() -> Path:
    return _require(TESTMEDIA)


@pytest.fixture(scope="session")
def scrfd_onnx() -> Path:
    return _require(SCRFD_ONNX)


def media(name: str) -> Path:
    """A file of ../shared/testmedia, skipping the test when it is absent."""
    return _require(TESTMEDIA / name)


@pytest.fixture(scope="session")
def fake_ckpt(tmp_path_factory):
    """fake_ckpt(name) -> Path of a deterministic fake upstream checkpoint ('wav2lip', 's3fd', 'syncnet_color',
    'disc_qual', 'syncnet_v2'), written once per session by ../shared/compat/make_fake_ckpt.py."""
    cache: dict[str, Path] = {}
    out_dir = tmp_path_factory.mktemp("fake_ckpts")

    def make(name: str) -> Path:
        if name not in cache:
            script = _require(COMPAT / "make_fake_ckpt.py")
            spec = importlib.util.spec_from_file_location("make_fake_ckpt", script)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            out = out_dir / f"{name}.pth"
            mod.main([str(COMPAT / f"{name}_keys.json"), str(out)])
            cache[name] = out
        return cache[name]

    return make
