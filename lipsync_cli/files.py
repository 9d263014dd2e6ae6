"""Writing files so that readers never see half of one: a temporary file beside the target, renamed on success."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lipsync_cli.errors import WriteError


def write_error(path: str | os.PathLike, err: OSError) -> WriteError:
    """The one-line error for an output that could not be written: names the output and the cause."""
    cause = err.strerror or str(err)
    return WriteError(f"could not write {path}: {cause}",
                      "free some space or choose another output folder" if err.errno == errno.ENOSPC else None)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; when the block succeeds it is renamed to ``path`` (atomic on
    one filesystem), when it raises (Ctrl-C too) it is deleted. The folder is created if needed.

    An ``OSError`` while writing or renaming (disk full, permission denied) becomes a ``WriteError`` naming
    ``path`` and the cause; nothing is left behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise write_error(path, err) from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, err) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8", newline="")
        else:
            tmp.write_bytes(data)
    return Path(path)
