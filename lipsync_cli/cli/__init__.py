"""Command-line edge: parse, validate, call one library function, map domain errors to exit codes.

Each command group lives in its own module and registers on ``app``. Heavy imports (torch, cv2)
happen inside the commands so ``lipsync --help`` is instant.
"""

from __future__ import annotations

import os
import sys

from lipsync_cli.cli import dub as _dub  # noqa: F401  (registers commands)
from lipsync_cli.cli import evaluate as _evaluate  # noqa: F401
from lipsync_cli.cli import models as _models  # noqa: F401
from lipsync_cli.cli import train as _train  # noqa: F401
from lipsync_cli.cli import weights as _weights  # noqa: F401
from lipsync_cli.cli.app import app


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: domain errors become one line on stderr and a non-zero exit."""
    from lipsync_cli.errors import LipsyncError

    debug = os.environ.get("LIPSYNC_DEBUG", "") not in ("", "0")
    try:
        app(args=argv)  # standalone mode: usage errors are reported by typer with exit code 2
    except LipsyncError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # a bug, not a user mistake: still one line unless debugging
        if debug:
            raise
        print(f"internal error: {type(err).__name__}: {err} (set LIPSYNC_DEBUG=1 for the traceback, "
              "and please report it)", file=sys.stderr)
        sys.exit(70)
