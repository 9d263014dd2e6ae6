"""The one table of `lipsync dub`'s job options, from which `dub` and `batch` both get their flags.

Each ``Flag`` is one option: its name is the manifest column and the key of ``build_options`` (a ``DubOptions``,
``TrackOptions`` or ``EncodeOptions`` field, a speaker option of ``setup_from_options``, or ``no_smooth``), its
default is ``DubOptions``' (``tests/test_batch_checks.py`` checks they agree), its help is shown by both commands.
``dub`` gets each flag with its default; ``batch`` gets the same flag with no default (``None``: not given), the
value given being the default of every row (a row's cell wins).

To add a dub option: add the field to ``DubOptions`` (or ``TrackOptions`` / ``EncodeOptions``), then one ``Flag``
line below, in the place it should appear in ``--help``. ``dub`` passes it to ``build_options`` by name, ``batch``
offers it as ``--NAME`` and as a manifest column, ``batch --list-columns`` lists it with this help.

This module imports no heavy library: ``lipsync --help`` builds every command's flags from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

from lipsync_cli.constants import CUT_THRESHOLD, DEFAULT_FPS, DEFAULT_PADS, MAX_GAP

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Flag:
    name: str  # python name, manifest column, ``build_options`` key
    type: Any  # the value's type on the command line
    default: Any  # dub's default (DubOptions'); None: unset
    help: str
    decls: tuple[str, ...] = ()  # flag spellings; () -> --name-with-dashes (bools: --name/--no-name)
    metavar: str | None = None

    @property
    def flag(self) -> str:
        """The long flag, as the user types it (``--det-size``)."""
        return next((d.split("/")[0] for d in self.decls if d.startswith("--")), "--" + self.name.replace("_", "-"))

    def parameter(self, *, unset: bool = False) -> inspect.Parameter:
        """This flag as a typer parameter: with dub's default, or (``unset``, batch) with None and dub's default
        shown in the help."""
        kind = inspect.Parameter.KEYWORD_ONLY
        kw: dict[str, Any] = {"help": self.help}
        if self.metavar:
            kw["metavar"] = self.metavar
        if not unset:
            return inspect.Parameter(self.name, kind, annotation=self.type,
                                     default=typer.Option(self.default, *self.decls, **kw))
        if self.default not in (None, False):
            kw["show_default"] = " ".join(map(str, self.default)) if isinstance(self.default, tuple) else str(
                self.default)
        hint = self.type if _is_optional(self.type) else Optional[self.type]
        return inspect.Parameter(self.name, kind, annotation=hint, default=typer.Option(None, *self.decls, **kw))


def _is_optional(hint: Any) -> bool:
    return type(None) in getattr(hint, "__args__", ())


DUB_FLAGS: tuple[Flag, ...] = (
    Flag("checkpoint", Optional[Path], None, "Generator weights (default: wav2lip_gan from the registry).",
         ("--checkpoint", "-c")),
    Flag("arch", Optional[str], None, "wav2lip | attn_wav2lip | lpips_attn_wav2lip | musetalk (default: from the "
                                      "checkpoint; a Wav2Lip file is not run as attn_wav2lip: its attention would be "
                                      "untrained; musetalk: MuseTalk 1.5 from `lipsync weights download musetalk`, "
                                      "needs the musetalk extra, blends through the feather mask, no face parsing)."),
    Flag("bbox_shift", int, 0, "MuseTalk's crop: moves its top edge by 2x this many px (+ down, - up), as "
                               "upstream's --bbox_shift (v1.5: 0). Only with --arch musetalk."),
    Flag("detector", str, "s3fd", "Face detector: s3fd | insightface."),
    Flag("detector_weights", Optional[Path], None, "Detector weights: s3fd .pth, or an insightface pack name / "
                                                   ".onnx file."),
    Flag("det_size", Optional[int], None, "Longest side (px) of the frames the detector sees (default 320 on CPU, "
                                          "640 on GPU)."),
    Flag("detect_every", int, 4, "Detect faces every N frames and interpolate between (frames whose ends disagree "
                                 "are detected too); 1 detects every frame."),
    Flag("box", Optional[Box], None, "Fixed face box X1 Y1 X2 Y2 (pixels, x right, y down): skips detection."),
    Flag("track", Optional[Path], None, "Reuse face boxes from `lipsync detect -o track.json`."),
    Flag("pads", Box, DEFAULT_PADS, "Pixels added TOP BOTTOM LEFT RIGHT around detected faces."),
    Flag("no_smooth", bool, False, "Do not smooth face boxes over time.", ("--no-smooth",)),
    Flag("ref_box", Optional[Box], None, "Dub the face nearest this box X1 Y1 X2 Y2 in each shot (default: the "
                                         "largest, most persistent face)."),
    Flag("max_gap", int, MAX_GAP, "Frames the dubbed face may go undetected (hand, head turn, blur) and stay the "
                                  "same person; those frames pass through."),
    Flag("cut_threshold", float, CUT_THRESHOLD, "Shot-cut sensitivity (PySceneDetect content score; lower finds "
                                                "more cuts, 0 turns cut detection off)."),
    Flag("ref_face", Optional[list[str]], None, "Dub this person, in every shot: a photo, or VIDEO@SECONDS. Repeat "
                                                "it, one per --speaker.", metavar="PHOTO|VIDEO@SECONDS"),
    Flag("ref_frame", Optional[int], None, "With --ref-box: the person is the face in that box on frame N of VIDEO "
                                           "(identity, across cuts)."),
    Flag("speaker", Optional[list[str]], None, "AUDIO of one person (pair each with a --ref-face, in order), or "
                                               "`auto`: dub whoever speaks in VIDEO's own audio.",
         metavar="AUDIO|auto"),
    Flag("speakers", Optional[Path], None, "speakers.yaml: one entry per person (audio, ref_face or ref_box + "
                                           "ref_frame, threshold).", metavar="FILE"),
    Flag("mix", Optional[Path], None, "The output's audio with several speakers (default: their tracks summed with "
                                      "headroom)."),
    Flag("recognition_weights", Optional[str], None, "ArcFace weights: an insightface pack name or a .onnx file "
                                                     "(default buffalo_l)."),
    Flag("identity_threshold", Optional[float], None, "Cosine distance beyond which a face is not the reference's "
                                                      "person (default 0.6)."),
    Flag("syncnet", Optional[Path], None, "SyncNet v2 weights for --speaker auto (default: the registry's "
                                          "syncnet_v2)."),
    Flag("strict", bool, False, "Fail, naming the frames, when a frame has no face (default: those frames pass "
                                "through unchanged)."),
    Flag("batch_size", Optional[int], None, "Faces per generator batch (default 16 on CPU, 128 on GPU; halved "
                                            "automatically on GPU out-of-memory)."),
    Flag("device", str, "auto", "auto | cpu | cuda | mps (auto: cuda > mps > cpu)."),
    Flag("precision", str, "auto", "auto | fp32 | bf16 | fp16 (auto: bf16 on CPUs with native bf16 and on CUDA GPUs "
                                   "that have it, fp16 on other GPUs, else fp32)."),
    Flag("blend", str, "feather", "feather (soft lower-face mask) | paste (exactly Wav2Lip)."),
    Flag("enhance", bool, False, "Sharpen the dubbed mouth with a face restorer (GFPGAN v1.4 by default; slow on a "
                                 "CPU: 10-17 s per face measured on a busy 2-core EPYC, ~4 s idle; see the README).",
         ("--enhance",)),
    Flag("enhancer_weights", Optional[Path], None, "Restorer for --enhance: a GFPGANv1.4-format .pth or an ONNX "
                                                   "restorer (GFPGAN, CodeFormer, GPEN, RestoreFormer++; 1x3xNxN "
                                                   "RGB in [-1, 1])."),
    Flag("enhance_strength", float, 1.0, "Blend weight of the restored mouth, 0..1."),
    Flag("enhance_noise", str, "fixed", "GFPGAN's noise: fixed (stored, no flicker) | random (as GFPGANer: changes "
                                        "every frame)."),
    Flag("loop", str, "pingpong", "When the audio outlasts the video: pingpong (no jump cut) | forward (as "
                                  "Wav2Lip)."),
    Flag("fps", float, DEFAULT_FPS, "Frame rate of the video made from a still image."),
    Flag("crf", int, 18, "Quality of libx264/libx265/libvpx-vp9/nvenc (0 lossless .. 51 worst)."),
    Flag("preset", str, "veryfast", "x264/x265 preset (ultrafast .. veryslow)."),
    Flag("vcodec", str, "libx264", "libx264 | libx265 | prores_ks | dnxhd (DNxHR) | libvpx-vp9 | a hardware "
                                   "encoder of this ffmpeg (h264_nvenc, hevc_nvenc, h264_videotoolbox...)."),
    Flag("pix_fmt", Optional[str], None, "Output pixel format, e.g. yuv420p, yuv422p10le (default: the source's "
                                         "subsampling and bit depth)."),
    Flag("profile", Optional[str], None, "Codec profile: ProRes proxy|lt|standard|hq|4444|4444xq, DNxHR "
                                         "dnxhr_lb|sq|hq|hqx|444, x264/x265 profiles."),
    Flag("acodec", str, "aac", "New audio track: aac | pcm | flac | copy (the audio file's own)."),
    Flag("keep_streams", bool, False, "Also copy the source's audio tracks, subtitles and chapters (after the new "
                                      "audio, which stays first and default).", ("--keep-streams",)),
    Flag("language", Optional[str], None, "ISO 639-2 language of the new audio track (eng, fra...)."),
    # like a dubbing studio: pauses, only some lines, timelines (DubOptions' block of the same name)
    Flag("silence", str, "hold", "The mouth in the speech's pauses: hold (closed and still: one silent mouth per "
                                 "pause) | model (the generator on the silence) | source (the original frames)."),
    Flag("silence_fade", int, 3, "Frames of cross-fade at each edge of a pause or a segment."),
    Flag("vad", str, "silero", "Speech activity: silero (Silero VAD, packaged) | energy (level)."),
    Flag("min_pause", float, 0.3, "Seconds: shorter pauses stay speech (a breath keeps the mouth)."),
    Flag("segments", Optional[Path], None, "Dub only these lines: CSV/JSON (start, end, audio, offset), SRT/ASS/VTT "
                                           "subtitles, or a .otio/.edl timeline; the rest is the source's picture "
                                           "and sound."),
    Flag("start", Optional[str], None, "Dub from here (seconds, HH:MM:SS.mmm or HH:MM:SS:FF)."),
    Flag("end", Optional[str], None, "Dub up to here (seconds or timecode)."),
    Flag("me", Optional[Path], None, "Music-and-effects stem: under the new lines (with --segments or "
                                     "--start/--end)."),
    Flag("timeline_out", Optional[Path], None, "Also write what was dubbed as a timeline: .otio (OpenTimelineIO) "
                                               "or .edl (CMX 3600)."),
)
FLAGS_BY_NAME = {f.name: f for f in DUB_FLAGS}
# manifest columns that are no flag of `lipsync dub` (tuning knobs of the library), with their meaning
COLUMN_ONLY = {
    "smooth": "Smooth face boxes over time (the manifest spelling of --no-smooth's opposite).",
    "smooth_window": "Frames of the centred mean that smooths face boxes.",
    "min_score": "Detections scored below this are ignored.",
    "max_pending_bytes": "Bytes of full frames held between decode and encode (caps the generator batch).",
    "offline": "Never download weights (also LIPSYNC_OFFLINE=1).",
}


def with_dub_flags(*, unset: bool = False, only: tuple[str, ...] | None = None) -> Callable[[Callable], Callable]:
    """Give a command every ``DUB_FLAGS`` option (or those named in ``only``), after its own positional-or-keyword
    parameters and before its keyword-only ones; the command takes them as ``**flags``. ``unset`` (batch): each
    defaults to None."""
    table = DUB_FLAGS if only is None else tuple(FLAGS_BY_NAME[n] for n in only)

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        head = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own
                if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        tail = [p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY]
        clash = {p.name for p in own} & {f.name for f in table}
        assert not clash, f"{fn.__name__} declares dub's options {clash} itself"
        params = head + [f.parameter(unset=unset) for f in table] + tail
        fn.__signature__ = sig.replace(parameters=params)
        fn.__annotations__ = {**{p.name: p.annotation for p in params}, "return": sig.return_annotation}
        return fn

    return decorate


def given(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags of ``DUB_FLAGS`` in ``flags`` that carry a value (not None, not an empty list)."""
    return {k: v for k, v in flags.items() if k in FLAGS_BY_NAME and v is not None and v != [] and v != ()}


def _type_text(hint: Any) -> str:
    import typing

    args = typing.get_args(hint)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return f"{_type_text(inner[0])} or none"
    origin = typing.get_origin(hint)
    if origin is tuple:
        return f"{len(args)} numbers" if args[-1] is not Ellipsis else "numbers"
    if origin is list:
        return f"list of {_type_text(args[0])} (a;b in a CSV cell)"
    if getattr(hint, "__name__", "") == "SpeakerSetup":
        return "path (speakers.yaml)"
    if hint is Path:
        return "path"
    return getattr(hint, "__name__", str(hint))


def _default_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def column_rows() -> list[tuple[str, str, str, str]]:
    """(column, type, default, meaning) of every manifest option column: names and types from the option
    dataclasses (``manifest.OPTION_COLUMNS``), defaults from ``DubOptions()``, meanings from ``DUB_FLAGS``."""
    import dataclasses

    from lipsync_cli.batch.manifest import OPTION_COLUMNS, column_type
    from lipsync_cli.dub import DubOptions

    base = DubOptions()
    values = {**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)},
              **dataclasses.asdict(base.track_options), **dataclasses.asdict(base.encode),
              "no_smooth": not base.track_options.smooth}
    rows = [("video", "path", "", "The video (or still image) to dub, relative to the manifest's folder."),
            ("audio", "path", "", "Its new speech."),
            ("output", "path", "VIDEO.AUDIO.mp4", "Where to write it, relative to OUTDIR.")]
    for name in OPTION_COLUMNS:
        meaning = FLAGS_BY_NAME[name].help if name in FLAGS_BY_NAME else COLUMN_ONLY[name]
        rows.append((name, _type_text(column_type(name)), _default_text(values.get(name)), meaning))
    return rows
