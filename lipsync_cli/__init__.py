"""lipsync_cli: lip-sync dubbing with Wav2Lip-family generators.

The Python API (what pipelines that embed us call)::

    from lipsync_cli import DubOptions, dub, detect, run_batch

    dub("talk.mp4", "talk.fr.wav", "talk.fr.mp4", DubOptions(box=(40, 20, 120, 100)))
    track = detect("talk.mp4", DubOptions(), cache_dir="tracks/")
    dub("talk.mp4", "talk.de.wav", "talk.de.mp4", track=track)  # the faces found above: no second detection
    report = run_batch("jobs.csv", BatchOptions(outdir=Path("out")))

The names are imported on first use, so ``import lipsync_cli`` (and ``lipsync --help``) stays instant.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "dub": ("lipsync_cli.dub", "dub"),
    "DubOptions": ("lipsync_cli.dub", "DubOptions"),
    "DubResult": ("lipsync_cli.dub", "DubResult"),
    "detect": ("lipsync_cli.tracks", "detect"),
    "run_batch": ("lipsync_cli.batch", "run_batch"),
    "BatchOptions": ("lipsync_cli.batch", "BatchOptions"),
    "BatchReport": ("lipsync_cli.batch", "BatchReport"),
    "TrackOptions": ("lipsync_cli.faces.track", "TrackOptions"),
    "Track": ("lipsync_cli.faces.track", "Track"),
    "LipsyncError": ("lipsync_cli.errors", "LipsyncError"),
}

__all__ = sorted(_API) + ["__version__"]


class _Package(types.ModuleType):
    """The package module with the API names resolved lazily.

    ``dub`` is both a submodule and the function of the API: importing ``lipsync_cli.dub`` would bind the
    submodule to the package's ``dub`` attribute, so that binding is refused and ``lipsync_cli.dub`` stays the
    function (``from lipsync_cli.dub import ...`` still reaches the module through ``sys.modules``)."""

    def __getattr__(self, name: str):
        if name not in _API:
            raise AttributeError(f"module 'lipsync_cli' has no attribute {name!r}")
        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        types.ModuleType.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return  # the import system binding a submodule over a public name
        types.ModuleType.__setattr__(self, name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_API))


sys.modules[__name__].__class__ = _Package
