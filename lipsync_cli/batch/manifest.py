"""Batch manifests: CSV, JSONL or YAML files of dub jobs, parsed and validated before any work starts.

One row a job: ``video``, ``audio``, an optional ``output`` and any ``DubOptions`` field as a column (``checkpoint``,
``box``, ``blend``, ``crf``, ``preset``...), plus the fields of ``TrackOptions`` (``pads``, ``ref_box``, ``max_gap``,
``smooth``; ``no_smooth`` as the CLI spells it), of ``EncodeOptions`` (``vcodec``, ``pix_fmt``, ``profile``,
``acodec``, ``keep_streams``, ``language``) and the speaker options of ``lipsync dub`` (``ref_face``, ``speaker``,
``ref_frame``, ``mix``, ``recognition_weights``, ``identity_threshold``, ``syncnet``). Columns are derived from the
dataclasses, so a new dub option is a new column without touching this file. Every row is checked with
``DubOptions.validate(output)``, the rules of ``lipsync dub`` (the encoder rules too: a codec this ffmpeg lacks, one
the output's container cannot hold); problems are collected with their line number and reported together
(``ManifestError``) unless the caller skips invalid rows. A derived output name takes the first container that
holds the row's codec (``.mp4``, else ``.mov`` for ProRes and DNxHR).

Paths in a row (inputs, ``checkpoint``, ``track``, ``detector_weights``, reference faces, speaker audio) are
relative to the manifest's folder, those of the command line's defaults to the current folder; ``output`` is
relative to the batch's output folder. Before any job runs, each job's files must be readable and its weights must
resolve (``lipsync_cli.batch.checks``): a missing input is a malformed row like a bad value. A CSV header names
only known columns, even when a column's cells are all empty; an unknown option in the defaults (``--set``) is one
``BadOption`` naming it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipsync_cli.dub import OUTPUT_SUFFIXES, DubOptions
from lipsync_cli.errors import BadOption, InputNotFound, LipsyncError
from lipsync_cli.faces.track import TrackOptions
from lipsync_cli.media.formats import EncodeOptions, default_suffix

MANIFEST_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".yaml": "yaml", ".yml": "yaml"}
JOB_COLUMNS = ("video", "audio", "output")
_ALIASES = {"no_smooth": ("smooth", lambda v: not v)}  # CLI spelling -> (field, value map)
EXTRA, ERROR = "\0extra", "\0error"  # markers of a broken row, kept until validation
_NONE_WORDS = ("", "none", "null", "off")
_TRUE = ("1", "true", "yes", "on", "y")
_FALSE = ("0", "false", "no", "off", "n")


class ManifestError(LipsyncError):
    """The manifest is unreadable or has malformed rows; ``problems`` lists (line, message), one per row."""

    exit_code = 2

    def __init__(self, manifest: Path, problems: list[tuple[int, str]],
                 hint: str = "fix them, or pass --skip-invalid to run the other rows"):
        self.manifest = manifest
        self.problems = problems
        first = "; ".join(f"line {n}: {m}" for n, m in problems[:3])
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        super().__init__(f"{manifest}: {len(problems)} malformed row(s): {first}{more}", hint)


@dataclass(frozen=True)
class Job:
    """One dub of the batch, every path absolute."""

    id: str  # the output relative to the batch folder (posix): unique, the job's name in the journal
    row: int  # 0-based position among the manifest's rows: shards take every Nth (stable across reruns)
    line: int  # the row's line in the manifest (1-based)
    video: Path
    audio: Path
    output: Path
    options: DubOptions


@dataclass
class Manifest:
    path: Path
    jobs: list[Job]
    invalid: list[tuple[int, int, str]]  # (row, line, reason) of rows left out by skip_invalid


# ---------------------------------------------------------------------------------------------------------------
# reading rows


def _read_rows(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """(line, raw row) of each job of the file, and the CSV header's names ([] for JSONL / YAML); a broken file
    is one ManifestError."""
    kind = MANIFEST_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise BadOption(f"manifest {path} must end in one of {', '.join(MANIFEST_SUFFIXES)}")
    if not path.is_file():
        raise InputNotFound(f"manifest not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputNotFound(f"cannot read manifest {path}: {err}") from None
    if kind == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
        rows = []
        for raw in reader:
            extra = raw.pop(None, None)  # cells beyond the header
            row = {k: v for k, v in raw.items() if k is not None and v not in (None, "")}
            if extra and any(e.strip() for e in extra):
                row[EXTRA] = extra
            if not any(str(v).strip() for v in row.values()):
                continue  # blank line
            rows.append((reader.line_num, row))
        return rows, [k for k in reader.fieldnames or () if k is not None]
    if kind == "jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                rows.append((n, {ERROR: f"not JSON ({err.msg})"}))
                continue
            rows.append((n, obj if isinstance(obj, dict) else {ERROR: "a row must be a JSON object"}))
        return rows, []
    import yaml

    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = (mark.line + 1) if mark else 1
        raise ManifestError(path, [(line, f"not YAML ({getattr(err, 'problem', err)})")]) from None
    items, nodes = data, getattr(node, "value", None)
    if isinstance(data, dict) and "jobs" in data:  # {jobs: [...]} form
        items = data["jobs"]
        nodes = next((v.value for k, v in node.value if getattr(k, "value", None) == "jobs"), None)
    if not isinstance(items, list):
        raise ManifestError(path, [(1, "a YAML manifest is a list of jobs (or a mapping with a `jobs:` list)")])
    out = []
    for k, item in enumerate(items):
        line = nodes[k].start_mark.line + 1 if nodes and k < len(nodes) else k + 1
        out.append((line, item if isinstance(item, dict) else {ERROR: "a job must be a mapping"}))
    return out, []


# ---------------------------------------------------------------------------------------------------------------
# converting values to the types of DubOptions / TrackOptions fields


def _field_types(cls) -> dict[str, Any]:
    from lipsync_cli.speakers import SpeakerSetup  # named by DubOptions only under TYPE_CHECKING

    hints = typing.get_type_hints(cls, localns={"SpeakerSetup": SpeakerSetup})
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


DUB_FIELDS = {k: v for k, v in _field_types(DubOptions).items() if k not in ("track_options", "encode")}
TRACK_FIELDS = _field_types(TrackOptions)
ENCODE_FIELDS = _field_types(EncodeOptions)
# the three dataclasses' fields are flat columns: no name may mean two options
assert not (set(DUB_FIELDS) & set(TRACK_FIELDS) or set(DUB_FIELDS) & set(ENCODE_FIELDS)
            or set(TRACK_FIELDS) & set(ENCODE_FIELDS)), "an option name is in two option dataclasses"
# `lipsync dub`'s speaker options, which are not DubOptions fields: with ``speakers`` (a speakers.yaml) they make
# DubOptions.speakers through ``setup_from_options``, as on the command line. A list (ref_face, speaker) is a
# JSON/YAML list or, in a CSV cell, items separated by ";".
SPEAKER_COLUMNS = {"ref_face": list[str], "speaker": list[str], "ref_frame": int, "mix": Path,
                   "recognition_weights": str, "identity_threshold": float, "syncnet": Path}
OPTION_COLUMNS = tuple(sorted(set(DUB_FIELDS) | set(TRACK_FIELDS) | set(ENCODE_FIELDS) | set(SPEAKER_COLUMNS)
                              | set(_ALIASES)))


def _convert(value: Any, hint: Any, base: Path | None) -> Any:
    """``value`` (a manifest cell: string, number, list, or already typed) as type ``hint``; ValueError if not."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            if len(args) < len(typing.get_args(hint)):
                return None
            raise ValueError("a value is required")
        return _convert(value, args[0], base)
    if origin is list:  # ref_face, speaker: a list, or "a;b" in a CSV cell
        items = [v for v in value.split(";") if v.strip()] if isinstance(value, str) else list(value)
        return [_convert(v, typing.get_args(hint)[0], base) for v in items]
    if origin is tuple:
        args = typing.get_args(hint)
        items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], base) for v in items)
        if len(items) != len(args):
            raise ValueError(f"needs {len(args)} numbers, got {len(items)}")
        return tuple(_convert(v, a, base) for v, a in zip(items, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise ValueError(f"{value!r} is not true/false")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not an integer")
        f = float(value)
        if f != int(f):
            raise ValueError(f"{value!r} is not an integer")
        return int(f)
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        return float(value)
    if hint is str:
        return str(value).strip()
    if hint is Path or (isinstance(hint, type) and issubclass(hint, Path)):
        p = Path(str(value).strip()).expanduser()
        return p if p.is_absolute() or base is None else base / p
    if getattr(hint, "__name__", "") == "SpeakerSetup":  # a speakers.yaml, as `lipsync dub --speakers`
        from lipsync_cli.speakers import SpeakerSetup

        p = Path(str(value).strip()).expanduser()
        return SpeakerSetup.from_yaml(p if p.is_absolute() or base is None else base / p)
    raise ValueError(f"this option cannot be given in a manifest ({hint})")


def _normalise(key: str) -> str:
    return str(key).strip().lower().replace("-", "_")


def _rel(text: str, base: Path | None) -> str:
    p = Path(text).expanduser()
    return str(p if p.is_absolute() or base is None else base / p)


def _speaker_value(name: str, raw: Any, base: Path | None) -> Any:
    """A speaker column's value, its paths relative to ``base`` (``VIDEO@SECONDS``: the video; ``speaker auto``
    and an insightface pack name stay as they are)."""
    value = _convert(raw, SPEAKER_COLUMNS[name], base)
    if name == "ref_face":
        return [f"{_rel(v.rpartition('@')[0], base)}@{v.rpartition('@')[2]}" if "@" in v else _rel(v, base)
                for v in value]
    if name == "speaker":
        return [v if v == "auto" else _rel(v, base) for v in value]
    if name == "recognition_weights" and value.lower().endswith(".onnx"):
        return _rel(value, base)
    return value


def _speaker_setup(columns: dict[str, Any], speakers_file: Any, track: dict[str, Any], base_options: DubOptions,
                   base: Path | None):
    """DubOptions.speakers from the speaker columns of a row, as ``lipsync dub`` makes it from its options;
    a ref_box given with ref_frame names the person on that frame and is no longer a box for every shot."""
    from lipsync_cli.speakers import setup_from_options

    ref_box = track.get("ref_box", base_options.track_options.ref_box)
    path = None if speakers_file is None else _convert(speakers_file, Path, base)
    setup = setup_from_options(speaker=columns.get("speaker", ()), ref_face=columns.get("ref_face", ()),
                               ref_box=ref_box, ref_frame=columns.get("ref_frame"), speakers_file=path,
                               mix=columns.get("mix"), recognition_weights=columns.get("recognition_weights"),
                               identity_threshold=columns.get("identity_threshold"), syncnet=columns.get("syncnet"))
    if setup is not None and columns.get("ref_frame") is not None:
        track["ref_box"] = None
    return setup


def build_options(values: dict[str, Any], base_options: DubOptions = DubOptions(), base: Path | None = None
                  ) -> DubOptions:
    """``base_options`` with the option columns of one row applied (names as DubOptions, TrackOptions or
    EncodeOptions fields, or the CLI's ``no_smooth``); validated without an output (``validate(output)`` adds the
    container's rules). Raises BadOption (a bad value, naming the column) or KeyError."""
    kw: dict[str, dict[str, Any]] = {"dub": {}, "track": {}, "encode": {}, "speaker": {}}
    speakers_file = None
    has_speaker_columns = any(_normalise(k) in SPEAKER_COLUMNS for k in values)
    for key, raw in values.items():
        name = _normalise(key)
        if name in SPEAKER_COLUMNS or (name == "speakers" and has_speaker_columns):
            try:
                if name == "speakers":
                    speakers_file = raw  # read with the other speaker columns, which override its top fields
                else:
                    kw["speaker"][name] = _speaker_value(name, raw, base)
            except (ValueError, TypeError) as err:
                raise BadOption(f"{key}: {err}") from None
            continue
        alias = _ALIASES.get(name)
        field_name, mapper = alias if alias else (name, None)
        group = next((g for g, fields in (("dub", DUB_FIELDS), ("track", TRACK_FIELDS), ("encode", ENCODE_FIELDS))
                      if field_name in fields), None)
        if group is None:
            raise KeyError(key)
        hint = {"dub": DUB_FIELDS, "track": TRACK_FIELDS, "encode": ENCODE_FIELDS}[group][field_name]
        try:
            value = _convert(raw, hint, base)
        except (ValueError, TypeError) as err:
            raise BadOption(f"{key}: {err}") from None
        if mapper is not None:
            value = mapper(value)
        if field_name == "cut_threshold" and value == 0:
            value = None  # as on the command line: 0 turns cut detection off
        kw[group][field_name] = value
    dub_kw = kw["dub"]
    if kw["speaker"]:
        dub_kw["speakers"] = _speaker_setup(kw["speaker"], speakers_file, kw["track"], base_options, base)
    if kw["track"]:
        dub_kw["track_options"] = dataclasses.replace(base_options.track_options, **kw["track"])  # validates
    if kw["encode"]:
        dub_kw["encode"] = dataclasses.replace(base_options.encode, **kw["encode"])
    opts = dataclasses.replace(base_options, **dub_kw)
    opts.validate()
    return opts


# ---------------------------------------------------------------------------------------------------------------
# the manifest


def _derived_name(video: Path, audio: Path, options: DubOptions) -> str:
    return f"{video.stem}.{audio.stem}{default_suffix(options.encode)}"


def column_type(name: str) -> Any:
    """The type of option column ``name`` (a field's hint; ``no_smooth``: bool)."""
    if name in _ALIASES:
        return bool
    for fields in (DUB_FIELDS, TRACK_FIELDS, ENCODE_FIELDS, SPEAKER_COLUMNS):
        if name in fields:
            return fields[name]
    raise KeyError(name)


def _is_path(hint: Any) -> bool:
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return any(a is Path or getattr(a, "__name__", "") == "SpeakerSetup" for a in args)


def check_defaults(defaults: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """The option columns that apply to every row (the command line's flags and ``--set``), checked once: an
    unknown name or a value of the wrong type is one BadOption naming it (not one problem per row). Paths are
    made absolute against ``base`` (default: the current folder), so rows relative to the manifest leave them."""
    base = Path.cwd() if base is None else base
    out: dict[str, Any] = {}
    for key, raw in defaults.items():
        name = _normalise(key)
        if name not in OPTION_COLUMNS:
            raise BadOption(f"{key!r} is not a dub option", "`lipsync batch --list-columns` lists them")
        hint = column_type(name)
        try:
            if name in SPEAKER_COLUMNS:
                out[name] = _speaker_value(name, raw, base)
            elif _is_path(hint):  # absolute here; read as a row's cell (speakers.yaml) with the row
                out[name] = _convert(raw, Path | None, base)
            else:
                out[name] = _convert(raw, hint, base)
        except (ValueError, TypeError) as err:
            raise BadOption(f"{key}={raw!r}: {err}") from None
    return out


def load_manifest(path: str | Path, outdir: str | Path, defaults: dict[str, Any] | None = None,
                  base_options: DubOptions = DubOptions(), *, skip_invalid: bool = False,
                  check_files: bool = True) -> Manifest:
    """Parse and validate every row of ``path``; jobs write into ``outdir``.

    ``defaults``: option columns (as in a row) that apply to every row that does not set them (the command line's
    options, see ``check_defaults``); ``base_options`` the options under them. ``check_files``: also check each
    job's inputs and weights (``checks.job_problems``). Malformed rows raise one ManifestError listing all of
    them with their line numbers, unless ``skip_invalid`` (then they are returned in ``Manifest.invalid``); an
    unknown column in a CSV header is a ManifestError even then."""
    from lipsync_cli.batch.checks import WeightsCheck, job_problems

    path = Path(path).resolve()
    outdir = Path(outdir).resolve()
    folder = path.parent
    defaults = check_defaults(defaults or {})
    rows, header = _read_rows(path)
    unknown = sorted(k for k in map(_normalise, header) if k not in JOB_COLUMNS and k not in OPTION_COLUMNS)
    if unknown:
        raise ManifestError(path, [(1, f"unknown column(s) {', '.join(unknown)} in the header")],
                            "rename or remove them (`lipsync batch --list-columns` lists the columns)")
    problems: list[tuple[int, int, str]] = []
    parsed: list[tuple[int, int, Path, Path, Path | None, DubOptions]] = []
    weights = WeightsCheck()
    for row_index, (line, raw) in enumerate(rows):
        try:
            if ERROR in raw:
                raise BadOption(raw[ERROR])
            if EXTRA in raw:
                raise BadOption(f"more cells than the header has columns ({', '.join(raw[EXTRA])})")
            cols = {_normalise(k): v for k, v in raw.items()}
            unknown = sorted(k for k in cols if k not in JOB_COLUMNS and k not in OPTION_COLUMNS)
            if unknown:
                raise BadOption(f"unknown column(s) {', '.join(unknown)}",
                                "a column is video, audio, output or a dub option (`lipsync batch --list-columns`)")
            for need in ("video", "audio"):
                if cols.get(need) in (None, "") or not str(cols[need]).strip():
                    raise BadOption(f"no {need}")
            video = _convert(cols["video"], Path, folder)
            audio = _convert(cols["audio"], Path, folder)
            output = None
            if cols.get("output") not in (None, ""):
                output = _convert(cols["output"], Path, outdir)
                if output.suffix.lower() not in OUTPUT_SUFFIXES:
                    raise BadOption(f"output {output.name} must end in one of {', '.join(OUTPUT_SUFFIXES)}")
            merged = {**defaults, **{k: v for k, v in cols.items() if k not in JOB_COLUMNS}}
            # command-line defaults are relative to the current folder (already absolute), row values to the manifest
            opts = build_options(merged, base_options, folder)
            parsed.append((row_index, line, video, audio, output, opts))
        except KeyError as err:
            problems.append((row_index, line, f"unknown column {err.args[0]}"))
        except LipsyncError as err:
            problems.append((row_index, line, str(err)))

    # outputs: explicit ones must not collide; derived ones never do (a -2, -3... suffix in row order)
    taken: dict[Path, int] = {}
    jobs: list[Job] = []
    for row_index, line, _video, _audio, output, _opts in parsed:
        if output is not None:
            out = output.resolve()
            if out in taken:
                problems.append((row_index, line, f"output {output} is also the output of line {taken[out]}"))
                continue
            taken[out] = line
    for row_index, line, video, audio, output, opts in parsed:
        if output is None:
            name = Path(_derived_name(video, audio, opts))
            out, k = outdir / name, 2
            while out.resolve() in taken:
                out, k = outdir / f"{name.stem}-{k}{name.suffix}", k + 1
            taken[out.resolve()] = line
        else:
            out = output.resolve()
            if taken.get(out) != line:
                continue  # the colliding row, reported above
        try:
            opts.validate(out)  # what the encoder and the container take (dub checks the same before it starts)
        except LipsyncError as err:
            problems.append((row_index, line, str(err)))
            continue
        try:
            job_id = out.relative_to(outdir).as_posix()
        except ValueError:
            job_id = out.as_posix()
        job = Job(job_id, row_index, line, video, audio, out, opts)
        missing = job_problems(job, weights) if check_files else []
        if missing:
            problems.append((row_index, line, "; ".join(missing)))
            continue
        jobs.append(job)
    problems.sort()
    if problems and not skip_invalid:
        raise ManifestError(path, [(line, msg) for _, line, msg in problems])
    jobs.sort(key=lambda j: j.row)
    return Manifest(path, jobs, problems)
