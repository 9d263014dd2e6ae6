"""Writing files so that readers never see half of one: a temporary file beside the target, renamed on success.

Temporary names are hidden and recognisable: ``.NAME.lipsync-HOST-PID-RANDOM.tmp`` (``VideoWriter`` adds the
video's suffix: ``.out.mp4.lipsync-HOST-PID-RANDOM.tmp.mp4``). A run killed with SIGKILL cannot delete its
temporary file, so every write into a folder first removes the temporary files there whose process is gone
(same host, pid no longer alive); files of live processes and of other hosts sharing the folder are kept.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lipsync_cli.errors import WriteError

TEMP_MARK = ".lipsync-"  # in every temporary name, between the target's name and HOST-PID-RANDOM
_TEMP_RE = re.compile(r"^\..+\.lipsync-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def write_error(path: str | os.PathLike, err: OSError) -> WriteError:
    """The one-line error for an output that could not be written: names the output and the cause."""
    cause = err.strerror or str(err)
    return WriteError(f"could not write {path}: {cause}",
                      "free some space or choose another output folder" if err.errno == errno.ENOSPC else None)


def _host() -> str:
    # containers sharing a volume have their own pid namespaces: a pid only means something on its own host
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def temp_path(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A fresh hidden temporary name beside ``path`` that ``remove_stale_temps`` recognises.

    ``suffix`` must start with ``.tmp`` (``.tmp``, ``.tmp.mp4``). Nothing is created."""
    path = Path(path)
    if not suffix.startswith(".tmp"):
        raise ValueError(f"temporary suffix must start with .tmp, got {suffix!r}")
    return path.with_name(f".{path.name}{TEMP_MARK}{_host()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: never call a pid dead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files in ``folder`` left by killed runs on this host (their pid is not alive).

    Returns the removed paths. Errors (folder missing or unreadable, a file already gone) are ignored: this is
    housekeeping, never a reason to fail a run."""
    removed: list[Path] = []
    host = _host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if TEMP_MARK not in entry.name:
            continue
        m = _TEMP_RE.match(entry.name)
        if m is None or m["host"] != host or _pid_alive(int(m["pid"])):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; when the block succeeds it is renamed to ``path`` (atomic on
    one filesystem), when it raises (Ctrl-C, SIGTERM too) it is deleted. The file gets the mode ``open()`` gives
    (0666 less the umask: 0644 usually), whatever the writer of the temporary file did. The folder is created if
    needed, and stale temporary files of killed runs there are removed first.

    An ``OSError`` while writing or renaming (disk full, permission denied) becomes a ``WriteError`` naming
    ``path`` and the cause; nothing is left behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)
        tmp = temp_path(path, suffix if suffix.startswith(".tmp") else ".tmp" + suffix)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies, as for open()
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
    except OSError as err:
        raise write_error(path, err) from None
    try:
        yield tmp
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # a writer that made its own file (safetensors: 0600)
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_error(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8", newline="")
        else:
            tmp.write_bytes(data)
    return Path(path)
