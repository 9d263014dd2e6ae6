"""`torchrun --nproc_per_node 2` on the CPU (gloo): both ranks train and rank 0 alone writes; fewer eval batches
than processes does not hang; SIGTERM (what torchrun's agent forwards on Ctrl-C or pre-emption) saves a whole
step on a step boundary, and the resume continues the uninterrupted run exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lipsync_cli.train.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.slow

HANG_S = 300  # a run that has not finished by then is stuck in a collective


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_synth")
    lists = make_synthetic_dataset(root, n_speakers=1, clips_per_speaker=2, seconds=1.2, seed=4)
    return root, lists


def _syncnet_args(data, run, *extra: str) -> list[str]:
    root, lists = data
    args = ["train", "syncnet", "--data", str(root), "--train-list", str(lists["train"])]
    args += ["--val-list", str(lists["val"]), "--out", str(run), "--batch-size", "2", "--workers", "0"]
    return args + ["--device", "cpu", "--no-tensorboard", "-q", *extra]


def _start(args: list[str], log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LIPSYNC_DEBUG", None)
    # a session of its own: a hung run's workers can be killed with it
    return subprocess.Popen([*cmd, "-m", "lipsync_cli", *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _wait(proc: subprocess.Popen, log_path, timeout: float = HANG_S) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"torchrun still running after {timeout} s (a hung collective?):\n"
                    f"{log_path.read_text()[-3000:]}")


def _torchrun(args: list[str], tmp_path, name: str) -> None:
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "w") as log:
        rc = _wait(_start(args, log), log_path)
    assert rc == 0, log_path.read_text()[-3000:]


def _records(run, split="val"):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def test_torchrun_with_fewer_eval_batches_than_processes(data, tmp_path):
    """--eval-batches 1 on 2 processes: rank 1 has no eval batch and still takes part in the all-reduce; rank 0
    alone writes the metrics (once per eval) and the checkpoints."""
    run = tmp_path / "ddp"
    _torchrun(_syncnet_args(data, run, "--steps", "2", "--eval-every", "2", "--eval-batches", "1"), tmp_path, "ddp")
    val = _records(run)
    assert [r["step"] for r in val] == [0, 2]  # once, not once per rank
    for r in val:
        assert 0 < r["loss"] < 5 and 0 <= r["acc"] <= 1, r
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["kind"] == "syncnet_color" and ckpt["world_size"] == 2
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "last.pt"]  # no step files by default


def test_sigterm_under_torchrun_saves_a_whole_step_and_resumes_exactly(data, tmp_path):
    """SIGTERM to torchrun mid-run (no checkpoint is due for 1000 steps): the ranks agree on a step boundary,
    rank 0 saves it (every optimizer state has taken exactly that many steps), and resuming it to k + 2 steps
    ends with the weights of an uninterrupted (k + 2)-step run."""
    run = tmp_path / "cut"
    log_path = tmp_path / "cut.log"
    with open(log_path, "w") as log:
        proc = _start(_syncnet_args(data, run, "--steps", "1000", "--eval-every", "1000", "--eval-batches", "2"),
                      log)
        deadline = time.monotonic() + HANG_S
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no baseline eval in time"
            time.sleep(0.2)
        time.sleep(3.0)  # the baseline eval is written before the first step: let a few steps run
        proc.send_signal(signal.SIGTERM)  # to the agent, which forwards it to both workers
        _wait(proc, log_path, timeout=120)
    text = log_path.read_text()
    assert (run / "last.pt").is_file(), text[-3000:]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    k = ckpt["step"]
    assert 1 <= k < 1000, text[-3000:]
    assert text.count(f"stopped at step {k}: saved") == 1, text[-3000:]  # rank 0 alone says so
    assert {int(s["step"]) for s in ckpt["optimizers"]["model"]["state"].values()} == {k}

    _torchrun(["train", "syncnet", "--resume", str(run), "--steps", str(k + 2), "-q"], tmp_path, "resume")
    ref = tmp_path / "ref"
    _torchrun(_syncnet_args(data, ref, "--steps", str(k + 2), "--eval-every", "1000", "--eval-batches", "2"),
              tmp_path, "ref")
    a, b = torch.load(ref / "last.pt", weights_only=True), torch.load(run / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == k + 2
    for name, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][name].float(), rtol=1e-5, atol=1e-7), name
