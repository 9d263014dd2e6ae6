"""Domain exceptions. The library raises these; only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class LipsyncError(Exception):
    """Base of every error meant for the user: ``str(err)`` is one line naming the input and the fix."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class BadOption(LipsyncError):
    """An option value that cannot work (bad box, negative batch size...)."""

    exit_code = 2


class InputNotFound(LipsyncError):
    """A file given on the command line does not exist or cannot be read."""

    exit_code = 2


class MediaError(LipsyncError):
    """A media file could not be opened, decoded or encoded."""

    exit_code = 3


class VideoOpenError(MediaError):
    """The file is not a video/image ffmpeg can decode."""


class NoVideoStream(MediaError):
    """The file has no video stream."""


class NoAudioStream(MediaError):
    """The file has no audio stream."""


class AudioTooShort(MediaError):
    """The audio is empty or shorter than one generator window."""


class EncodeError(MediaError):
    """ffmpeg failed while writing the output."""


class WriteError(LipsyncError):
    """An output could not be written (no space left, permission denied, a failed rename); nothing is left
    behind. The message names the output and the cause."""

    exit_code = 3


class NoFaceError(LipsyncError):
    """No face where one is required (``--strict``, or no face in the whole video)."""

    exit_code = 4


class WeightsError(LipsyncError):
    """Base for problems with weight files."""

    exit_code = 5


class WeightsNotFound(WeightsError):
    """A needed weight file is missing; the hint says where it was looked for and how to get it."""


class CheckpointError(WeightsError):
    """A checkpoint is corrupt, truncated, or unsafe to load (would run code)."""


class CheckpointMismatch(WeightsError):
    """A checkpoint of the wrong kind/architecture for the command: names expected vs found."""


class DownloadError(WeightsError):
    """A download failed on every mirror, or its checksum did not match."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: raised in the main thread by the CLI's handler, so everything that cleans up
    after Ctrl-C (``finally``, ``with``, ``except KeyboardInterrupt``) cleans up after a kill too. The CLI exits
    with ``exit_code`` = 128 + the signal number (143 for SIGTERM, 129 for SIGHUP), as a shell reports it."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(self.name)
