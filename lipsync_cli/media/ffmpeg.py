"""The ffmpeg executable and its child processes: which ffmpeg (``find_ffmpeg``, ``$LIPSYNC_FFMPEG``), starting it so
that it dies with this process (``start_child``, ``run_child``), and the small helpers every ffmpeg call shares (a
frame rate as ffmpeg's exact rational, the tail and last line of its stderr for error messages).

Everything in ``lipsync_cli.media`` goes through this one ``ffmpeg`` (no ffprobe needed).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from fractions import Fraction

from lipsync_cli.errors import MediaError

FFMPEG_ENV = "LIPSYNC_FFMPEG"  # environment override: path of the ffmpeg executable to use
STDERR_TAIL = 2000  # characters of ffmpeg's stderr kept in error messages


# --------------------------------------------------------------------------------------------------------------
# ffmpeg executable
# --------------------------------------------------------------------------------------------------------------

def find_ffmpeg() -> str:
    """Path of the ffmpeg executable: ``$LIPSYNC_FFMPEG``, else ``ffmpeg`` on PATH, else imageio-ffmpeg's binary.

    Raises ``MediaError`` when none is found.
    """
    override = os.environ.get(FFMPEG_ENV)
    if override:
        exe = shutil.which(override) or (override if os.path.isfile(override) else None)
        if exe is None:
            raise MediaError(f"{FFMPEG_ENV}={override} is not an executable",
                             hint=f"unset {FFMPEG_ENV} or point it at an ffmpeg binary")
        return exe
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as err:  # imageio-ffmpeg missing or without a binary for this platform
        raise MediaError("ffmpeg not found", hint="install ffmpeg or the imageio-ffmpeg package") from err


# --------------------------------------------------------------------------------------------------------------
# child processes
# --------------------------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), resolved in the parent: the child between fork and exec should do very little."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when this process dies, even by SIGKILL; else None.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so it is only set for children started
    from the main thread (whose end is the process's). Without prctl (macOS, Windows), or from another thread,
    children end by themselves when their pipes close, and ``files.remove_stale_temps`` collects what an
    encoder finished after a SIGKILL. preexec_fn makes subprocess fork instead of vfork and runs this in the
    child before exec; it only calls the pre-resolved prctl and getppid (no imports, no locks), which is what
    keeps it safe in a process with threads."""
    prctl = _prctl()
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no one is left to send the signal
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def start_child(cmd: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(cmd, **kwargs)`` for ffmpeg: on Linux the child dies with this process, even when it is
    killed with SIGKILL (see ``_die_with_parent``). Every ffmpeg of the package starts through here."""
    return subprocess.Popen(cmd, preexec_fn=_die_with_parent(), **kwargs)


def run_child(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, **kwargs)`` with ``start_child``'s guarantee (an interrupt kills the child too)."""
    return subprocess.run(cmd, preexec_fn=_die_with_parent(), **kwargs)


def _fps_arg(fps: float) -> str:
    """A frame rate as the exact rational ffmpeg should use: 29.97 -> '2997/100', 30000/1001 -> '30000/1001'."""
    frac = Fraction(fps).limit_denominator(1001)
    if abs(float(frac) - fps) > 1e-6 * fps:  # not a simple rational: pass it with full precision
        frac = Fraction(fps).limit_denominator(1_000_000)
    return f"{frac.numerator}/{frac.denominator}"


def _tail(text: str) -> str:
    return text.strip()[-STDERR_TAIL:]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"
