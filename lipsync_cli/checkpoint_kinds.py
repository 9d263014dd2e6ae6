"""What each kind of weight file looks like: a registry that every network fills in for itself.

A network's module registers the key signature of its state dict when it is imported
(``register_kind(KindSignature("syncnet_color", ..., requires=("face_encoder.", "audio_encoder."), ...))``), so
``checkpoint.detect_kind`` never holds a list of everyone's key prefixes. :data:`PROVIDERS` names the modules
that register kinds; they are imported the first time a kind is looked up. This module imports nothing of
lipsync_cli at module level (every network may import it).

Signatures must not overlap: a state dict matches at most one (``tests/test_checkpoint.py`` checks every
upstream key list and every registry architecture).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

# Modules whose import registers a kind: one per network family. The S3FD face detector's module
# (faces/s3fd.py) is owned elsewhere; its signature is registered below until that module registers it itself.
PROVIDERS = (
    "lipsync_cli.models.wav2lip",
    "lipsync_cli.models.attn_wav2lip",
    "lipsync_cli.models.lpips_attn_wav2lip",
    "lipsync_cli.models.syncnet",
    "lipsync_cli.models.syncnet_v2",
    "lipsync_cli.models.disc",
    "lipsync_cli.models.gfpgan",
)
UNKNOWN = "unknown"


@dataclass(frozen=True)
class KindSignature:
    """The keys a state dict of one kind has (``module.`` prefixes already removed).

    requires: prefixes that each start at least one key; excludes: prefixes that start none;
    test: a further predicate on the key set (e.g. "some key holds '.cbam.'"); generator: a dubbing generator
    (``models.build_generator`` can rebuild it by this name).
    """

    kind: str
    title: str  # human name, e.g. "SyncNet lip-sync expert (lipsync_expert.pth)"
    requires: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    test: Callable[[frozenset[str]], bool] | None = None
    generator: bool = False

    def matches(self, keys: frozenset[str]) -> bool:
        def has(prefix: str) -> bool:
            return any(k.startswith(prefix) for k in keys)

        return (all(has(p) for p in self.requires) and not any(has(p) for p in self.excludes)
                and (self.test is None or self.test(keys)))


_REGISTRY: dict[str, KindSignature] = {}
_loaded = False


def register_kind(sig: KindSignature) -> KindSignature:
    """Add (or replace, on a module reload) the signature of ``sig.kind``; returns it."""
    _REGISTRY[sig.kind] = sig
    return sig


def signatures() -> dict[str, KindSignature]:
    """Every registered signature by kind, the providers imported first."""
    global _loaded
    if not _loaded:
        for name in PROVIDERS:
            importlib.import_module(name)
        _loaded = True
    return dict(_REGISTRY)


def kind_of_keys(keys) -> str:
    """The one kind whose signature ``keys`` match, else ``"unknown"`` (none, or several: the file is odd)."""
    keys = frozenset(keys)
    found = [s.kind for s in signatures().values() if s.matches(keys)]
    return found[0] if len(found) == 1 else UNKNOWN


def generator_kinds() -> tuple[str, ...]:
    """The kinds that are dubbing generators, in registration order."""
    return tuple(k for k, s in signatures().items() if s.generator)


class _KindNames(Mapping):
    """kind -> human name, ``"unknown"`` included; filled from the registry when first read."""

    def _names(self) -> dict[str, str]:
        return {**{k: s.title for k, s in signatures().items()}, UNKNOWN: "unrecognised file"}

    def __getitem__(self, kind: str) -> str:
        return self._names()[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


class _GeneratorKinds(Sequence):
    """:func:`generator_kinds` as a constant-looking sequence (``kind in GENERATOR_KINDS``), read when used."""

    def __getitem__(self, i):
        return generator_kinds()[i]

    def __len__(self) -> int:
        return len(generator_kinds())

    def __repr__(self) -> str:
        return repr(generator_kinds())


KIND_NAMES: Mapping[str, str] = _KindNames()
GENERATOR_KINDS: Sequence[str] = _GeneratorKinds()

register_kind(KindSignature(
    "s3fd", "S3FD face detector", requires=("conv1_1.weight", "conv3_3_norm_mbox_conf")))
