"""Which onnxruntime providers our ONNX models ask for, and the warning when a CUDA device cannot get CUDA.

The CPU build of onnxruntime is what is installed here: the GPU build is simulated by patching
``onnxruntime.get_available_providers`` (what ``providers_for`` asks), never needed for real."""

from __future__ import annotations

import logging
import warnings

import onnxruntime as ort
import pytest

from lipsync_cli.faces import scrfd
from lipsync_cli.faces.scrfd import CPU_PROVIDER, CUDA_PROVIDER, SCRFDDetector, providers_for, session_settings


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(scrfd, "_warned", set())
    monkeypatch.setattr(scrfd, "_preload_cuda_libraries", lambda: None)


def _available(monkeypatch, *names: str) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(names))


def _installed(monkeypatch, **versions: str) -> None:
    monkeypatch.setattr(scrfd, "_installed", lambda dist: versions.get(dist.replace("-", "_")))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_cpu_device_never_asks_for_cuda(monkeypatch, caplog):
    _available(monkeypatch, CUDA_PROVIDER, CPU_PROVIDER)
    assert providers_for("cpu") == [CPU_PROVIDER]
    assert providers_for("mps") == [CPU_PROVIDER]
    assert _warnings(caplog) == []


def test_cuda_device_gets_the_cuda_provider_first_on_its_gpu(monkeypatch, caplog):
    _available(monkeypatch, "TensorrtExecutionProvider", CUDA_PROVIDER, CPU_PROVIDER)
    assert providers_for("cuda") == [CUDA_PROVIDER, CPU_PROVIDER]
    assert providers_for("cuda:1") == [(CUDA_PROVIDER, {"device_id": 1}), CPU_PROVIDER]
    opts, providers = session_settings("cuda", threads=3)  # the one home SCRFD and the restorers use
    assert providers == [CUDA_PROVIDER, CPU_PROVIDER] and opts.intra_op_num_threads == 3
    assert _warnings(caplog) == []


def test_missing_cuda_provider_warns_once_with_the_install_command(monkeypatch, caplog):
    _available(monkeypatch, "AzureExecutionProvider", CPU_PROVIDER)
    _installed(monkeypatch, onnxruntime="1.31.1")
    with caplog.at_level(logging.WARNING, logger=scrfd.__name__):
        assert providers_for("cuda") == [CPU_PROVIDER]
        assert session_settings("cuda:0")[1] == [CPU_PROVIDER]
    got = _warnings(caplog)
    assert len(got) == 1, got
    assert "pip install 'lipsync-cli[gpu]'" in got[0] and "onnxruntime 1.31.1" in got[0]


def test_both_builds_installed_names_the_reinstall_through_notify(monkeypatch, caplog):
    _available(monkeypatch, CPU_PROVIDER)
    _installed(monkeypatch, onnxruntime="1.31.1", onnxruntime_gpu="1.31.1")
    said: list[str] = []
    assert providers_for("cuda", notify=said.append) == [CPU_PROVIDER]
    providers_for("cuda", notify=said.append)
    assert len(said) == 1 and said[0].startswith("warning: ")
    assert "pip install --force-reinstall --no-deps onnxruntime-gpu" in said[0]
    assert _warnings(caplog) == []  # told the user once, through the callback, not twice


def test_scrfd_on_cuda_without_the_provider_runs_on_the_cpu_and_says_so(monkeypatch, caplog, scrfd_onnx):
    _available(monkeypatch, CPU_PROVIDER)
    with caplog.at_level(logging.WARNING, logger=scrfd.__name__):
        det = SCRFDDetector(scrfd_onnx, "cuda", det_size=160, threads=1)
    assert det.session.get_providers() == [CPU_PROVIDER]
    got = _warnings(caplog)
    assert len(got) == 1 and "lipsync-cli[gpu]" in got[0]


def test_a_cuda_provider_that_cannot_start_is_not_a_silent_fallback(monkeypatch, caplog, scrfd_onnx):
    # the provider is listed but the session cannot start it (as with CUDA/cuDNN libraries missing): onnxruntime
    # falls back to the CPU on its own, and we say so
    _available(monkeypatch, CUDA_PROVIDER, CPU_PROVIDER)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger=scrfd.__name__):
        warnings.simplefilter("ignore", UserWarning)  # onnxruntime's own "not in available provider names"
        det = SCRFDDetector(scrfd_onnx, "cuda", det_size=160, threads=1)
    assert det.session.get_providers() == [CPU_PROVIDER]
    got = _warnings(caplog)
    assert len(got) == 1 and "could not start for SCRFD" in got[0]
