"""Command-line edge: parse, validate, call one library function, map domain errors to exit codes.

Each command group lives in its own module and registers on ``app``. Heavy imports (torch, cv2)
happen inside the commands so ``lipsync --help`` is instant.

Exit codes are decided here, not by typer/click (whose standalone mode changed them between versions):
0 success; 1 a ``LipsyncError`` without a more specific code; 2 a usage error (unknown option or command,
missing or malformed argument, no command at all) or a bad option value / missing input; 3 a media or write
error (no space left, permission denied...); 4 no face; 5 weights; 70 an internal error (a bug); 130 Ctrl-C;
128 + the signal number for SIGTERM (143) and SIGHUP (129), after the same cleanup as Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lipsync_cli.cli import batch as _batch  # noqa: F401  (registers commands)
from lipsync_cli.cli import dub as _dub  # noqa: F401
from lipsync_cli.cli import evaluate as _evaluate  # noqa: F401
from lipsync_cli.cli import models as _models  # noqa: F401
from lipsync_cli.cli import studio as _studio  # noqa: F401
from lipsync_cli.cli import train as _train  # noqa: F401
from lipsync_cli.cli import weights as _weights  # noqa: F401
from lipsync_cli.cli.app import app

EXIT_USAGE = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
TERMINATING_SIGNALS = ("SIGTERM", "SIGHUP")  # sent by schedulers, `docker stop`, `kill`, a closed terminal


@contextmanager
def terminate_as_interrupt() -> Iterator[list[int]]:
    """While active, SIGTERM and SIGHUP raise ``Terminated`` (a ``KeyboardInterrupt``) in the main thread, so the
    cleanup that follows Ctrl-C (ffmpeg killed, temporary files deleted, a training run saved) follows a kill too.

    Yields the list of signals received. A second signal while cleaning up is ignored (SIGKILL still works, and
    the ffmpeg children die with the process); a signal that was ignored on entry (``nohup``) stays ignored.
    Outside the main thread (where Python cannot install handlers) nothing changes."""
    from lipsync_cli.errors import Terminated

    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    leaving = False

    def handler(signum, frame) -> None:
        if received or leaving:  # already unwinding, or the command is over: let it finish
            return
        received.append(signum)
        raise Terminated(signum)

    previous = {}
    for name in TERMINATING_SIGNALS:
        sig = getattr(signal, name, None)  # no SIGHUP on Windows
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield received
    finally:
        leaving = True
        for sig, old in previous.items():
            signal.signal(sig, old)


def _click_kind(err: BaseException) -> str | None:
    """'usage', 'abort', 'exit' or 'click' for click's exceptions and those of the click copy some typer versions
    vendor (same class names, different classes); None for anything else."""
    names = {cls.__name__ for cls in type(err).__mro__}
    if "UsageError" in names:
        return "usage"
    if "Abort" in names:
        return "abort"
    if "Exit" in names and isinstance(getattr(err, "exit_code", None), int):
        return "exit"
    if "ClickException" in names:
        return "click"
    return None


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return its exit code (see the module docstring).

    Domain errors become one line on stderr; ``LIPSYNC_DEBUG=1`` re-raises them with the traceback."""
    from lipsync_cli.errors import Terminated

    debug = os.environ.get("LIPSYNC_DEBUG", "") not in ("", "0")
    args = list(sys.argv[1:] if argv is None else argv)
    with terminate_as_interrupt() as received:
        try:
            if not args:  # help, then a usage error: whichever way this click version treats no_args_is_help
                app(args=["--help"], standalone_mode=False)
                return EXIT_USAGE
            code = _run_app(args, debug)
        except KeyboardInterrupt:  # Ctrl-C or a kill after the command's own handling
            if debug and not received:
                raise
            code = EXIT_INTERRUPTED
        if received:
            err = Terminated(received[0])
            print(f"terminated by {err.name}", file=sys.stderr)
            return err.exit_code
        return code


def _run_app(args: list[str], debug: bool) -> int:
    from lipsync_cli.errors import LipsyncError

    try:
        rv = app(args=args, standalone_mode=False)
    except LipsyncError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        kind = _click_kind(err)
        if kind == "usage":
            err.show()  # usage line, the --help hint and the error, on stderr
            hint = _usage_hint(args, err)
            if hint:
                print(f"hint: {hint}", file=sys.stderr)
            return EXIT_USAGE
        if kind == "abort":  # click's wrapper of Ctrl-C (or of end of input at a prompt)
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if kind == "exit":
            return err.exit_code
        if kind == "click":
            err.show()
            return err.exit_code
        if debug:  # a bug, not a user mistake: still one line unless debugging
            raise
        print(f"internal error: {type(err).__name__}: {err} (set LIPSYNC_DEBUG=1 for the traceback, "
              "and please report it)", file=sys.stderr)
        return EXIT_INTERNAL
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


def _usage_hint(args: list[str], err: BaseException) -> str | None:
    """A line for a usage error whose cause is a renamed option (old usage), else None."""
    after = [args[k + 1] if k + 1 < len(args) else "" for k, a in enumerate(args) if a == "--speakers"]
    if args[:1] == ["detect"] and any(not value or value.startswith("-") for value in after):  # the old flag
        from lipsync_cli.cli.dub import SPEAKING_HINT

        return f"--speakers takes a speakers.yaml, as in `lipsync dub`; {SPEAKING_HINT}"
    return None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: exits with ``run(argv)``'s code. As the ``lipsync`` command itself (``argv``
    None) it leaves without the interpreter's teardown (``leave``); called with arguments (tests, scripts
    embedding the CLI) it raises ``SystemExit`` as usual."""
    code = run(argv)
    if argv is None:
        leave(code)
    sys.exit(code)


def leave(code: int) -> None:
    """End the process with ``code`` now, skipping what a normal exit does after the atexit handlers: tearing down
    every module and the native libraries' destructors, about 0.5 s of each command once torch is loaded (2-core
    CPU). The atexit handlers still run first (temporary folders, logging, Ray) and stdout / stderr are flushed;
    it returns instead (a normal exit) while another non-daemon thread is alive, or where torch was not loaded."""
    import atexit
    import threading

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if "torch" not in sys.modules or others or run_exit_handlers is None:
        return
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head): nothing more can reach it
            pass
    os._exit(code)
