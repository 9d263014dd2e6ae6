"""Kills and exit codes: SIGTERM/SIGHUP clean up like Ctrl-C, ffmpeg children die with their parent even on
SIGKILL, the temporary file a SIGKILL leaves is removed by the next run, and exit codes are ours, not typer's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from synth import make_audio, make_video

BOX = ("40", "20", "120", "100")  # inside the 160x120 synthetic frames
linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("killmedia")
    return {
        "video": make_video(d / "clip.mp4", seconds=0.4, fps=25),
        "long_speech": make_audio(d / "long.wav", seconds=4.0),  # 100 frames: the run is still busy when killed
        "tiny_speech": make_audio(d / "tiny.wav", seconds=0.2),
    }


def _env() -> dict:
    env = {**os.environ, "LIPSYNC_OFFLINE": "1"}
    env.pop("LIPSYNC_DEBUG", None)
    return env


def _dub_args(media, ckpt: Path, out: Path, speech: str = "long_speech") -> list[str]:
    return [sys.executable, "-m", "lipsync_cli", "dub", str(media["video"]), str(media[speech]), "-o", str(out),
            "--checkpoint", str(ckpt), "--box", *BOX, "--batch-size", "1", "--precision", "fp32",
            "--device", "cpu", "--quiet"]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) "
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")  # a zombie has exited


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[1] == pid:
                kids.append(int(entry.name))
    return kids


def _mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _start_and_wait_for_encoder(args: list[str], out_dir: Path) -> tuple[subprocess.Popen, list[int]]:
    """Start the CLI; return it once the encoder's temporary file exists, with its ffmpeg children."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and not any(out_dir.iterdir()) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    kids = _children(proc.pid)
    assert kids, "no ffmpeg child while encoding"
    return proc, kids


def _wait_dead(pids: list[int], seconds: float = 10) -> list[int]:
    deadline = time.time() + seconds
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@linux_only
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"])
def test_terminating_signal_mid_dub_cleans_up_like_ctrl_c(media, fake_ckpt, tmp_path, sig, code):
    """SIGTERM/SIGHUP while encoding: exit 128+signal, no output, no temporary file, no ffmpeg left."""
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    proc, kids = _start_and_wait_for_encoder(_dub_args(media, fake_ckpt("wav2lip"), out_dir / "out.mp4"), out_dir)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    survivors = _wait_dead(kids, 5)
    for p in survivors:  # do not leave them to the rest of the suite
        os.kill(p, signal.SIGKILL)
    assert proc.returncode == code, err
    assert f"terminated by {sig.name}" in err and "Traceback" not in err, err
    assert list(out_dir.iterdir()) == []
    assert survivors == [] and _mentioning(str(out_dir)) == []


@linux_only
def test_sigkill_mid_dub_kills_ffmpeg_and_the_next_run_removes_its_temp(media, fake_ckpt, tmp_path):
    """SIGKILL cannot be cleaned up after: the ffmpeg children die with the process (PR_SET_PDEATHSIG), the
    temporary file it leaves names the dead pid, and the next run into the folder removes it."""
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    proc, kids = _start_and_wait_for_encoder(_dub_args(media, fake_ckpt("wav2lip"), out_dir / "out.mp4"), out_dir)
    proc.kill()
    proc.communicate(timeout=60)
    survivors = _wait_dead(kids, 10)
    for p in survivors:
        os.kill(p, signal.SIGKILL)
    assert survivors == []
    left = [p.name for p in out_dir.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.mp4.lipsync-") and f"-{proc.pid}-" in left[0], left

    r = subprocess.run(_dub_args(media, fake_ckpt("wav2lip"), out_dir / "next.mp4", "tiny_speech"),
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in out_dir.iterdir()] == ["next.mp4"]


@linux_only
def test_start_child_dies_with_its_parent_on_sigkill():
    """An ffmpeg that would run forever (no pipes to notice the parent's death) is killed with its parent."""
    code = ("import subprocess, time\n"
            "from lipsync_cli.media import ffmpeg\n"
            "start = getattr(ffmpeg, 'start_child', subprocess.Popen)\n"  # Popen: what the package used before
            "p = start([ffmpeg.find_ffmpeg(), '-nostdin', '-re', '-f', 'lavfi', '-i', 'anullsrc', '-f', 'null', '-'],"
            " stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,"
            " start_new_session=True)\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    line = parent.stdout.readline()
    if not line:
        parent.wait()
        pytest.fail(parent.stderr.read())
    child = int(line)
    try:
        assert _alive(child) and _stat(child)[1] == parent.pid
        parent.kill()
        parent.wait()
        assert _wait_dead([child], 10) == []
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    """Writers remove temporary files of dead pids of this host; live pids, other hosts and other files stay."""
    import re
    import socket

    import numpy as np

    from lipsync_cli.files import atomic_write
    from lipsync_cli.media.encode import VideoWriter

    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid is free
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"  # names: .NAME.lipsync-HOST-PID-HEX8.tmp
    stale = [f".out.mp4.lipsync-{host}-{dead.pid}-0123abcd.tmp.mp4", f".t.json.lipsync-{host}-{dead.pid}-89abcdef.tmp"]
    kept = [f".out.mp4.lipsync-{host}-{os.getpid()}-0123abcd.tmp.mp4",  # a live run
            f".out.mp4.lipsync-{host}x-{dead.pid}-0123abcd.tmp.mp4",  # another host sharing the folder
            ".out.mp4.12345678.tmp.mp4", "notes.txt"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    atomic_write(tmp_path / "t.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["t.json"])

    for name in stale:
        (tmp_path / name).write_bytes(b"x")
    with VideoWriter(tmp_path / "v.mp4", 32, 32, 25, preset="ultrafast") as writer:
        writer.write(np.zeros((32, 32, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["t.json", "v.mp4"])


def _usage_error_classes() -> list[type]:
    """click's UsageError and, when this typer vendors its own copy of click, that one too."""
    import importlib

    import click

    classes = [click.UsageError]
    vendored = getattr(importlib.import_module("typer.core"), "_click", None)
    if vendored is not None:
        classes.append(vendored.exceptions.UsageError)
    return classes


@pytest.mark.parametrize("args", [["dub", "--no-such-option"], ["no-such-command"], ["dub"], [],
                                  ["dub", "v.mp4", "a.wav", "-o", "o.mp4", "--crf", "high"]],
                         ids=["unknown option", "unknown command", "missing argument", "no command", "bad value"])
def test_usage_errors_exit_2_whatever_click_says(args, monkeypatch, capsys):
    """Usage errors exit 2 even with a typer/click whose usage errors carry another exit code."""
    from lipsync_cli.cli import main

    for cls in _usage_error_classes():
        monkeypatch.setattr(cls, "exit_code", 1)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_version_and_domain_errors_keep_their_codes(capsys, tmp_path):
    from lipsync_cli.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and "lipsync_cli" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["detect", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "t.json")])
    assert exc.value.code == 2 and "missing.mp4" in capsys.readouterr().err


def _console_script(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``body`` then the ``lipsync`` console-script entry point (``main()`` with no argv) with ``args``."""
    code = (f"import sys, atexit, threading, time\nimport torch\n{body}\n"
            f"sys.argv = ['lipsync', *{list(args)!r}]\nfrom lipsync_cli.cli import main\nmain()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)


def test_the_command_leaves_without_teardown_but_runs_atexit_and_flushes(tmp_path):
    # the console script ends with os._exit after the atexit handlers (torch's teardown costs ~0.5 s a command):
    # the handlers ran, the output is whole and the exit code is the command's
    flag = tmp_path / "atexit.txt"
    body = (f"atexit.register(lambda: open({str(flag)!r}, 'w').write('ran'))\n"
            "sys.stdout.write('x' * 100000)")  # buffered output, flushed only at exit
    ok = _console_script(tmp_path, body, "models")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("x" * 100000) and "wav2lip" in ok.stdout
    assert flag.read_text() == "ran"
    bad = _console_script(tmp_path, "", "dub", "nosuch.mp4", "nosuch.wav", "-o", "out.mp4")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "nosuch" in bad.stderr


def test_the_command_exits_normally_while_another_thread_works(tmp_path):
    # a non-daemon thread still running (a library's) is not cut off: the exit waits for it, as Python's does
    done = tmp_path / "thread.txt"
    body = (f"threading.Thread(target=lambda: (time.sleep(1.0), open({str(done)!r}, 'w').write('done'))).start()")
    r = _console_script(tmp_path, body, "models")
    assert r.returncode == 0, r.stderr
    assert done.read_text() == "done"
