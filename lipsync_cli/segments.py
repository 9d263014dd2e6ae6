"""Only the lines you replace: segments of the video to dub (``dub --segments``, ``--start/--end``)."""

from __future__ import annotations

from lipsync_cli.errors import BadOption


def validate_segment_options(options) -> None:
    """The option rules of segments, checked by ``DubOptions.validate`` (no file is read here)."""
    if options.segments is not None and (options.start is not None or options.end is not None):
        raise BadOption("--segments and --start/--end both say what to dub: use one")
