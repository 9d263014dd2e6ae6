"""How a dub is encoded: video codec, pixel format and bit depth, colour tags, container, audio codec, kept streams.

``EncodeOptions`` is what the user asks (``--vcodec``, ``--pix-fmt``, ``--profile``, ``--acodec``, ``--keep-streams``,
``--language``); ``EncodeOptions.validate(output)`` refuses what cannot work before any frame is decoded (an encoder
this ffmpeg lacks, a codec the container cannot hold, a profile or pixel format the encoder does not have).
``plan_output(source, options, out)`` turns it, with what ``probe.probe`` learnt about the source, into an
``EncodePlan``: the ffmpeg arguments ``encode.VideoWriter`` adds, the bit depth of the frames through the pipeline
(8 or 16 bits per channel) and one-line notes for the user (an odd size encoded 4:4:4, a stream that was dropped).

The rules, in one place:
- depth: frames are decoded at 16 bits per channel (bgr48le) when the source has more than 8 bits and the output
  pixel format too; else 8 (bgr24).
- pixel format: ``--pix-fmt``; else the profile's (ProRes, DNxHR); else the source's chroma subsampling at the
  source's depth, or the nearest the encoder has (never the deprecated full-range yuvj formats: range is a tag).
- colour: the source's primaries, transfer, matrix and range are written as tags, and the RGB -> YUV conversion
  uses the source's matrix and range, so what the decoder turned into RGB goes back to the same YUV values. A still
  image (a JPEG is full range) becomes limited-range video, the range every player expects.
- size: x264, x265 and the hardware encoders need even sides for 4:2:0 (and an even width for 4:2:2); ProRes,
  DNxHR and VP9 take any size. For the former, an odd-sized source is encoded 4:4:4 at the same depth (exact size,
  less player support); where the user chose the pixel format, one edge column/row is repeated to pad it to even.
  A note says which.
- rotation, frame rate (rational), start timecode: kept (rotation as display-matrix metadata over the stored frames).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from lipsync_cli.errors import BadOption
from lipsync_cli.media.ffmpeg import find_ffmpeg, run_child
from lipsync_cli.media.probe import AudioInfo, VideoInfo, hdr_metadata

# suffix -> muxer (one table for VideoWriter and the rules here)
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
ACODECS = ("aac", "pcm", "flac", "copy")
HARDWARE_SUFFIXES = ("_nvenc", "_videotoolbox", "_qsv", "_vaapi", "_amf", "_mf", "_vulkan", "_v4l2m2m")
AUDIO_BITRATE = "192k"
# the speed/size trade-offs of x264 and x265 (``--preset``; the other encoders ignore it)
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")

# ProRes profile -> (prores_ks profile number, pixel format)
PRORES_PROFILES = {"proxy": (0, "yuv422p10le"), "lt": (1, "yuv422p10le"), "standard": (2, "yuv422p10le"),
                   "hq": (3, "yuv422p10le"), "4444": (4, "yuv444p10le"), "4444xq": (5, "yuv444p10le")}
# DNxHR profile -> pixel format (the resolution-independent HR profiles only)
DNXHR_PROFILES = {"dnxhr_lb": "yuv422p", "dnxhr_sq": "yuv422p", "dnxhr_hq": "yuv422p", "dnxhr_hqx": "yuv422p10le",
                  "dnxhr_444": "yuv444p10le"}
DNXHR_MIN_SIZE = (256, 120)  # the encoder refuses smaller frames
# encoders whose files name a YUV matrix even when told none: an untagged source is converted to that matrix (and
# tagged with it), else decoders would read values meant for ffmpeg's default (BT.601) as BT.709
SELF_TAGGING = {"dnxhd": "bt709"}
ANY_SIZE = ("prores_ks", "dnxhd", "libvpx-vp9")  # encoders that take odd sides in 4:2:0/4:2:2 (x264, x265 do not)
HDR_TRANSFERS = ("smpte2084", "arib-std-b67")  # PQ, HLG: their mastering metadata is looked for


@dataclass(frozen=True)
class _Codec:
    containers: tuple[str, ...]  # muxers that hold it
    profiles: tuple[str, ...] = ()  # () -> any value is passed to the encoder


VCODECS = {
    "libx264": _Codec(("mp4", "mov", "matroska"), ("baseline", "main", "high", "high10", "high422", "high444")),
    "libx265": _Codec(("mp4", "mov", "matroska"), ("main", "main10", "main12", "main422-10", "main422-12",
                                                   "main444-8", "main444-10", "main444-12")),
    "prores_ks": _Codec(("mov", "matroska"), tuple(PRORES_PROFILES)),
    "dnxhd": _Codec(("mov", "matroska"), tuple(DNXHR_PROFILES)),
    "libvpx-vp9": _Codec(("mp4", "matroska"), ("0", "1", "2", "3")),
}
_HW_CONTAINERS = ("mp4", "mov", "matroska")

# audio codecs each muxer takes as they are (stream copy); Matroska takes any
_COPYABLE_AUDIO = {
    # no PCM: ffmpeg before 6.1 cannot write it in MP4, and most players and editors cannot read it there
    "mp4": ("aac", "mp3", "ac3", "eac3", "opus", "flac", "alac"),
    "mov": ("aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_s32le",
            "pcm_f32le", "pcm_u8"),
}
_TEXT_SUBS = ("subrip", "srt", "ass", "ssa", "mov_text", "webvtt", "text")
_BITMAP_SUBS = {"mp4": ("dvd_subtitle",), "mov": ("dvd_subtitle",),
                "matroska": ("dvd_subtitle", "hdmv_pgs_subtitle", "dvb_subtitle")}
# colour matrix names of ffmpeg's tags -> the scale filter's names for the same conversion
_SCALE_MATRIX = {"bt709": "bt709", "bt470bg": "bt601", "smpte170m": "smpte170m", "bt2020nc": "bt2020",
                 "bt2020c": "bt2020", "smpte240m": "smpte240m", "fcc": "fcc"}


HARDWARE = "hardware"  # --vcodec hardware: the first of HARDWARE_H264 that works here
HARDWARE_H264 = ("h264_nvenc", "h264_videotoolbox", "h264_qsv", "h264_amf", "h264_vaapi", "h264_mf")


def is_hardware(vcodec: str) -> bool:
    return vcodec.endswith(HARDWARE_SUFFIXES)


def resolve_vcodec(vcodec: str) -> str:
    """``vcodec``, or for 'hardware' the first H.264 hardware encoder this ffmpeg has that opens on this machine
    (``BadOption`` naming those it tried when none does)."""
    if vcodec != HARDWARE:
        return vcodec
    listed = [c for c in HARDWARE_H264 if encoders().get(c) == "V"]
    for name in listed:
        if _hardware_opens(name) is None:
            return name
    raise BadOption("--vcodec hardware: no hardware H.264 encoder works on this machine"
                    + (f" (ffmpeg lists {', '.join(listed)}, none opens)" if listed else ""),
                    "use a software encoder such as libx264")


# ---------------------------------------------------------------------------------------------------------------
# what this ffmpeg has (asked once per process)


def _ffmpeg_text(*args: str) -> str:
    proc = run_child([find_ffmpeg(), "-nostdin", "-hide_banner", *args], check=False, capture_output=True,
                     text=True, errors="replace")
    return proc.stdout + proc.stderr


@functools.cache
def encoders() -> dict[str, str]:
    """Encoder name -> 'V', 'A' or 'S' (video, audio, subtitle), from ``ffmpeg -encoders``."""
    found = {}
    for line in _ffmpeg_text("-encoders").splitlines():
        m = re.match(r"^ ([VAS])[.A-Z]{5} (\S+)", line)
        if m and m.group(2) != "=":
            found[m.group(2)] = m.group(1)
    return found


@functools.cache
def encoder_pix_fmts(vcodec: str) -> tuple[str, ...]:
    """The pixel formats ``vcodec`` takes (``ffmpeg -h encoder=NAME``); () when it does not say."""
    m = re.search(r"Supported pixel formats: ([^\n]+)", _ffmpeg_text("-h", f"encoder={vcodec}"))
    return tuple(m.group(1).split()) if m else ()


@dataclass(frozen=True)
class PixFmt:
    """A pixel format as ``ffmpeg -pix_fmts`` describes it: components, bits of the deepest one, bits per pixel."""

    name: str
    components: int
    depth: int
    bits_per_pixel: int

    @property
    def rgb(self) -> bool:
        return self.name.startswith(("rgb", "bgr", "gbr", "argb", "abgr", "x2rgb", "x2bgr", "0rgb", "0bgr"))

    @property
    def chroma(self) -> str:
        """'420', '422', '444' (or 'rgb', 'gray', '' for the rest), from the bits per pixel of 3 components."""
        if self.rgb:
            return "rgb"
        if self.components == 1:
            return "gray"
        if self.components != 3 or not self.depth:
            return ""
        return {1.5: "420", 2.0: "422", 3.0: "444"}.get(self.bits_per_pixel / self.depth, "")


@functools.cache
def _pix_fmt_table() -> dict[str, PixFmt]:
    table = {}
    for line in _ffmpeg_text("-pix_fmts").splitlines():
        m = re.match(r"^[I.][O.][H.][P.][B.] (\S+)\s+(\d+)\s+(\d+)\s+([\d-]+)", line)
        if m:
            depth = max(int(d) for d in m.group(4).split("-"))
            table[m.group(1)] = PixFmt(m.group(1), int(m.group(2)), depth, int(m.group(3)))
    return table


def pix_fmt(name: str) -> PixFmt | None:
    """What ffmpeg knows of pixel format ``name`` (None when it does not know it)."""
    return _pix_fmt_table().get(name)


@functools.cache
def _hardware_opens(vcodec: str) -> str | None:
    """None when ``vcodec`` encodes one small frame here; else ffmpeg's last error line (no GPU, no driver...)."""
    text = _ffmpeg_text("-loglevel", "error", "-f", "lavfi", "-i", "color=black:size=256x256:duration=0.04",
                        "-frames:v", "1", "-c:v", vcodec, "-f", "null", "-")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else None


# ---------------------------------------------------------------------------------------------------------------
# the user's choice


@dataclass(frozen=True)
class EncodeOptions:
    """The output's codecs and streams (see the module docstring for the rules)."""

    vcodec: str = "libx264"  # libx264 | libx265 | prores_ks | dnxhd | libvpx-vp9 | a hardware encoder (h264_nvenc...)
    pix_fmt: str | None = None  # None -> from the source (and the profile)
    profile: str | None = None  # x264/x265 profile, ProRes proxy|lt|standard|hq|4444|4444xq, DNxHR dnxhr_*
    acodec: str = "aac"  # aac | pcm | flac | copy
    keep_streams: bool = False  # copy the source's audio tracks, subtitles and chapters beside the new audio
    language: str | None = None  # ISO 639-2 code of the new audio track ('eng', 'fra'...)

    def validate(self, output: str | Path | None = None) -> None:
        """Refuse, with one line naming the fix, what cannot be encoded here; ``output`` gives the container."""
        if self.vcodec not in VCODECS and not is_hardware(self.vcodec) and self.vcodec != HARDWARE:
            raise BadOption(f"--vcodec {self.vcodec!r} is not one of {', '.join(VCODECS)}, hardware or a hardware "
                            "encoder (h264_nvenc, hevc_nvenc, h264_videotoolbox...)")
        if self.acodec not in ACODECS:
            raise BadOption(f"--acodec {self.acodec!r} is not one of {', '.join(ACODECS)}")
        if self.language is not None and not re.fullmatch(r"[a-z]{3}", self.language):
            raise BadOption(f"--language {self.language!r} is not an ISO 639-2 code",
                            "give three lower-case letters such as eng, fra, deu")
        if self.vcodec == HARDWARE:
            return dataclasses.replace(self, vcodec=resolve_vcodec(HARDWARE)).validate(output)
        have = encoders()
        if have.get(self.vcodec) != "V":
            listed = [c for c in VCODECS if have.get(c) == "V"] + sorted(
                c for c in have if is_hardware(c) and have[c] == "V")
            raise BadOption(f"this ffmpeg has no {self.vcodec} encoder; it has: {', '.join(listed)}",
                            "install an ffmpeg built with it, or set LIPSYNC_FFMPEG to one")
        codec = VCODECS.get(self.vcodec)
        if codec is not None and codec.profiles and self.profile is not None and self.profile not in codec.profiles:
            raise BadOption(f"--profile {self.profile!r} is not a {self.vcodec} profile: "
                            f"{', '.join(codec.profiles)}")
        if self.pix_fmt is not None:
            if pix_fmt(self.pix_fmt) is None:
                raise BadOption(f"--pix-fmt {self.pix_fmt!r} is not a pixel format ffmpeg knows",
                                "see ffmpeg -pix_fmts")
            supported = encoder_pix_fmts(self.vcodec)
            if supported and self.pix_fmt not in supported:
                raise BadOption(f"{self.vcodec} cannot encode --pix-fmt {self.pix_fmt}; it takes "
                                f"{', '.join(supported)}")
            wanted = _profile_pix_fmt(self.vcodec, self.profile)
            if wanted is not None and _chroma_depth(wanted) != _chroma_depth(self.pix_fmt):
                raise BadOption(f"--profile {self.profile} encodes {wanted}, not --pix-fmt {self.pix_fmt}",
                                "give one of them")
        if output is not None:
            muxer = MUXERS.get(Path(output).suffix.lower())
            if muxer is None:
                raise BadOption(f"output {output} must end in one of {', '.join(MUXERS)}")
            holds = codec.containers if codec is not None else _HW_CONTAINERS
            if muxer not in holds:
                suffixes = sorted({s for s, m in MUXERS.items() if m in holds and s != ".m4v"})
                raise BadOption(f"{self.vcodec} does not go in {Path(output).suffix} files; "
                                f"use {' or '.join(suffixes)}")
            if (problem := _acodec_problem(self.acodec, muxer)) is not None:
                raise BadOption(problem)
            if self.language is not None:
                container_language(self.language, muxer)  # a language .mov cannot carry is refused here
        if is_hardware(self.vcodec) and (problem := _hardware_opens(self.vcodec)) is not None:
            raise BadOption(f"ffmpeg lists {self.vcodec} but cannot open it on this machine: {problem}",
                            "use a software encoder such as libx264")


def default_suffix(options: EncodeOptions) -> str:
    """The file suffix of an output named for the user (``lipsync batch``): .mp4 when it holds ``options``'
    codecs, else the first of .mov, .mkv that does (ProRes and DNxHR: .mov). An unknown codec gets .mp4, and
    ``validate`` says what is wrong with it."""
    codec = VCODECS.get(options.vcodec)
    holds = codec.containers if codec is not None else _HW_CONTAINERS
    for suffix in (".mp4", ".mov", ".mkv"):
        muxer = MUXERS[suffix]
        if muxer in holds and _acodec_problem(options.acodec, muxer) is None:
            return suffix
    return ".mp4"


# ISO 639-2 has two codes for 20 languages: bibliographic (B) and terminology (T)
_B_TO_T = {"alb": "sqi", "arm": "hye", "baq": "eus", "bur": "mya", "chi": "zho", "cze": "ces", "dut": "nld",
           "fre": "fra", "geo": "kat", "ger": "deu", "gre": "ell", "ice": "isl", "mac": "mkd", "mao": "mri",
           "may": "msa", "per": "fas", "rum": "ron", "slo": "slk", "tib": "bod", "wel": "cym"}
# The codes of QuickTime's old language table, as ffmpeg's .mov muxer spells them (libavformat/isom.c,
# mov_mdhd_language_map): a .mov keeps only these (any other code is written as "undetermined"). The table mixes
# B and T codes (ger, chi, dut but fra, ces, ron) and calls Swedish "sve".
_QUICKTIME_LANGUAGES = frozenset(
    "eng fra ger ita dut sve spa dan por nor heb jpn ara fin gre ice mlt tur chi urd hin tha kor lit pol hun est "
    "lav rus iri alb ron ces slk slv yid mac bul ukr bel uzb kaz aze arm geo mol kir tgk tuk mon pus kur kas snd "
    "tib nep san mar ben asm guj ori mal kan tam tel bur khm lao vie ind tgl may amh tir orm som swa run mlg epo "
    "wel baq cat lat que grn aym tat uig dzo jav".split())


def container_language(code: str, muxer: str) -> str:
    """The spelling of ISO 639-2 ``code`` that ``muxer``'s files keep: MP4 takes the T code (ISO 14496-12), a .mov
    the entry of QuickTime's table (``deu`` -> ``ger``, ``zho`` -> ``chi``, ``swe`` -> ``sve``); Matroska any.
    Raises BadOption for a language a .mov cannot carry."""
    t = _B_TO_T.get(code, code)
    if muxer == "mp4":
        return t
    if muxer != "mov":
        return code
    for candidate in (code, t, *(b for b, tt in _B_TO_T.items() if tt == t), "sve" if t == "swe" else ""):
        if candidate in _QUICKTIME_LANGUAGES:
            return candidate
    raise BadOption(f"--language {code}: .mov files cannot carry this language (QuickTime's language table lacks "
                    "it, ffmpeg would write it as undetermined)", "use an .mp4 or .mkv output")


def _acodec_problem(acodec: str, muxer: str) -> str | None:
    """Why ``--acodec`` cannot go in ``muxer``'s files (None when it can)."""
    if acodec == "flac" and muxer == "mov":
        return "--acodec flac does not go in .mov files; use .mkv or .mp4, or --acodec pcm"
    if acodec == "pcm" and muxer == "mp4":
        return ("--acodec pcm does not go in .mp4 files (most players and editors cannot read it there); "
                "use .mov or .mkv, or --acodec aac or flac")
    return None


def _chroma_depth(name: str) -> tuple[str, int]:
    pf = pix_fmt(name)
    return (pf.chroma, pf.depth) if pf else ("", 0)


def _profile_pix_fmt(vcodec: str, profile: str | None) -> str | None:
    if profile is None:
        return None
    if vcodec == "prores_ks":
        return PRORES_PROFILES[profile][1]
    if vcodec == "dnxhd":
        return DNXHR_PROFILES[profile]
    return None


# ---------------------------------------------------------------------------------------------------------------
# the plan for one source


@dataclass(frozen=True)
class EncodePlan:
    """The ffmpeg arguments of one output. ``VideoWriter`` puts ``pipe_args`` before its raw-frame input, adds
    ``source`` as an input when streams are kept, and writes ``output_args(audio_map, source_input)``.

    ``depth``: bits per channel of the frames written (8: uint8 bgr24, 16: uint16 bgr48le). ``encoded_size``:
    (width, height) of the stream in the file (padded, or swapped back for a rotated source). ``notes``: what
    the user should know (one line each).
    """

    vcodec: str
    pix_fmt: str
    depth: int
    muxer: str
    pipe_args: tuple[str, ...] = ()
    video_args: tuple[str, ...] = ()
    audio_args: tuple[str, ...] = ("-c:a", "aac", "-b:a", AUDIO_BITRATE)
    keep_args: tuple[str, ...] = ()  # "{src}" stands for the source's input index
    source: Path | None = None
    encoded_size: tuple[int, int] = (0, 0)
    notes: tuple[str, ...] = ()
    colour_range: str = ""  # the range tag written: "tv" (limited), "pc" (full), "" (none: limited for YUV)

    @property
    def pipe_pix_fmt(self) -> str:
        return "bgr48le" if self.depth == 16 else "bgr24"

    def output_args(self, audio_map: str | None, source_input: int | None) -> list[str]:
        """Everything after the inputs but the muxer and file: ``audio_map`` maps the new audio ('1:0'),
        ``source_input`` is the input index of ``source`` (None: no stream is kept)."""
        args = ["-map", "0:v:0"]
        if audio_map is not None:
            args += ["-map", audio_map]
        if source_input is not None:
            args += [a.replace("{src}", str(source_input)) for a in self.keep_args]
        args += list(self.video_args)
        if audio_map is not None:
            args += list(self.audio_args)
        return args


def simple_plan(width: int, height: int, codec: str = "libx264", crf: int = 18, preset: str = "medium",
                muxer: str = "mp4", audio_bitrate: str = AUDIO_BITRATE) -> EncodePlan:
    """8-bit yuv420p, no colour tags, odd sides padded: ``VideoWriter``'s plan when it is given none."""
    w2, h2 = width + width % 2, height + height % 2
    vf = [] if (w2, h2) == (width, height) else ["-vf", _pad_filter(width, height)]
    args = [*vf, "-c:v", codec, *(["-preset", preset] if preset else []),
            *(["-crf", str(crf)] if codec in ("libx264", "libx265") else []), "-pix_fmt", "yuv420p"]
    return EncodePlan(vcodec=codec, pix_fmt="yuv420p", depth=8, muxer=muxer, video_args=tuple(args),
                      audio_args=("-c:a", "aac", "-b:a", audio_bitrate), encoded_size=(w2, h2))


def _pad_filter(width: int, height: int) -> str:
    """Pad to even sides by repeating the last column/row (no source pixel is moved or resampled)."""
    return (f"pad={width + width % 2}:{height + height % 2}:0:0,fillborders=right={width % 2}:bottom={height % 2}"
            ":mode=smear")


def _choose_pix_fmt(src: PixFmt | None, supported: tuple[str, ...], chroma: str | None = None) -> str | None:
    """The encoder's pixel format nearest the source: same chroma subsampling (RGB and grey sources: 4:2:0), the
    smallest depth >= the source's, else the deepest below it; planar yuv before semi-planar (nv12, p010)."""
    want_chroma = chroma or (src.chroma if src is not None and src.chroma in ("420", "422", "444") else "420")
    want_depth = src.depth if src is not None and src.depth else 8
    cands = [pf for name in supported if (pf := pix_fmt(name)) is not None and pf.chroma == want_chroma
             and not name.startswith(("yuvj", "yuva")) and "msb" not in name]
    if not cands:
        return None
    above = [pf for pf in cands if pf.depth >= want_depth]
    pick = min(above, key=lambda pf: (pf.depth, not pf.name.startswith("yuv"))) if above else \
        max(cands, key=lambda pf: (pf.depth, pf.name.startswith("yuv")))
    return pick.name


def _subsampling_fits(name: str, width: int, height: int) -> bool:
    chroma = _chroma_depth(name)[0]
    if chroma == "420":
        return width % 2 == 0 and height % 2 == 0
    if chroma == "422":
        return width % 2 == 0
    return True


def _rotation_filters(rotation: float) -> tuple[list[str], list[str]]:
    """(filters turning displayed frames back into stored ones, input options tagging the display matrix).

    ffmpeg decodes a rotated stream upright (autorotate); writing the stored orientation with the same display
    matrix keeps the file as the source was, pixel for pixel, for players and editors that apply it."""
    theta = (-round(rotation)) % 360  # the turn ffmpeg's autorotate applies when decoding
    undo = {90: ["transpose=cclock"], 180: ["hflip", "vflip"], 270: ["transpose=clock"]}.get(theta)
    if undo is None:  # none, or not a quarter turn: the frames stay upright
        return [], []
    return undo, ["-noautorotate", "-display_rotation", f"{rotation:g}"]


def plan_output(source: VideoInfo, options: EncodeOptions, out: str | Path, *, crf: int = 18,
                preset: str = "veryfast", audio: AudioInfo | None = None) -> EncodePlan:
    """The encode of ``out`` for frames of ``source`` (its displayed size), by the rules of the module docstring.

    ``audio``: the new audio track (needed for ``--acodec copy``, to check the container takes its codec).
    Raises ``BadOption`` for what cannot be encoded (checked before any frame is decoded)."""
    options.validate(out)
    options = dataclasses.replace(options, vcodec=resolve_vcodec(options.vcodec))
    out = Path(out)
    muxer = MUXERS[out.suffix.lower()]
    vcodec = options.vcodec
    notes: list[str] = []
    src = pix_fmt(source.pix_fmt) if source.pix_fmt else None
    supported = encoder_pix_fmts(vcodec)
    undo_rotation, pipe_args = ([], []) if source.is_image else _rotation_filters(source.rotation)
    width, height = source.width, source.height
    if undo_rotation[:1] and undo_rotation[0].startswith("transpose"):
        width, height = height, width  # the stored frame
    if vcodec == "dnxhd" and (width < DNXHR_MIN_SIZE[0] or height < DNXHR_MIN_SIZE[1]):
        raise BadOption(f"DNxHR needs frames of at least {DNXHR_MIN_SIZE[0]}x{DNXHR_MIN_SIZE[1]}, the source is "
                        f"{width}x{height}", "use --vcodec prores_ks")

    # --- pixel format and profile ---
    profile = options.profile
    chosen_by_user = options.pix_fmt is not None
    if options.pix_fmt is not None:
        fmt = options.pix_fmt
    elif vcodec in ("prores_ks", "dnxhd"):
        if profile is None:
            profile = _default_profile(vcodec, src)
        fmt = _profile_pix_fmt(vcodec, profile)
        chosen_by_user = options.profile is not None
    else:  # a still image becomes 8-bit 4:2:0 video, the most widely played
        fmt = _choose_pix_fmt(None if source.is_image else src, supported) or (supported[0] if supported else "yuv420p")
    if vcodec in ("prores_ks", "dnxhd") and profile is None:  # --pix-fmt alone: the profile that encodes it
        profile = _profile_for(vcodec, fmt)
    pad = False
    if vcodec not in ANY_SIZE and not _subsampling_fits(fmt, width, height):
        f444 = None if chosen_by_user else _choose_pix_fmt(pix_fmt(fmt), supported, chroma="444")
        if f444 is not None:
            notes.append(f"{width}x{height} has an odd side, which {fmt} cannot hold: encoding {f444} (4:4:4) "
                         "to keep the exact size")
            fmt = f444
        else:
            pad = True
            notes.append(f"{width}x{height} has an odd side, which {fmt} cannot hold: padded to "
                         f"{width + width % 2}x{height + height % 2} by repeating the last column/row")
    out_pf = pix_fmt(fmt)
    depth = 16 if (src is not None and src.depth > 8 and out_pf is not None and out_pf.depth > 8) else 8

    # --- colour: the conversion from our RGB frames, and the tags ---
    c = source.colour
    if src is not None and src.rgb:  # an RGB source's range and matrix say nothing of the YUV written
        c = dataclasses.replace(c, range="", space="")
    filters = list(undo_rotation)
    if pad:
        filters.append(_pad_filter(width, height))
    tags: list[str] = []
    if out_pf is not None and out_pf.rgb:
        filters.append(f"format={fmt}")
        rng, space = "pc", "gbr"
    else:
        # a still becomes limited-range video, the range players expect (full-range H.264 decodes as the
        # deprecated yuvj formats); a video keeps its own range
        rng = "tv" if source.is_image else c.range or ("pc" if source.pix_fmt.startswith("yuvj") else "")
        space = c.space if c.space != "gbr" else ""
        if not space and vcodec in SELF_TAGGING:  # its files always claim a matrix: convert to that one
            space = SELF_TAGGING[vcodec]
        scale = []
        if space in _SCALE_MATRIX:
            scale.append(f"out_color_matrix={_SCALE_MATRIX[space]}")
        if rng:
            scale.append(f"out_range={rng}")
        filters.append(f"scale={':'.join(scale)}" if scale else "scale")
        filters.append(f"format={fmt}")
    setparams = []
    for flag, key, value in (("-color_primaries", "color_primaries", c.primaries), ("-color_trc", "color_trc", c.trc),
                             ("-colorspace", "colorspace", space), ("-color_range", "range", rng)):
        if value:
            tags += [flag, value]
            setparams.append(f"{key}={value}")
    if setparams:
        filters.append("setparams=" + ":".join(setparams))
    vargs = ["-vf", ",".join(filters), "-c:v", vcodec, "-pix_fmt", fmt, *tags]
    hdr = []
    if c.trc in HDR_TRANSFERS and not source.is_image:
        meta = hdr_metadata(source)
        if meta is not None and vcodec == "libx265":
            hdr = ["hdr10=1", *meta.x265_params()]
        elif meta is not None:
            notes.append(f"the source's HDR mastering-display/light-level metadata is only written with libx265; "
                         f"this {vcodec} output keeps the {c.trc} tags without it")
    vargs += _quality_args(vcodec, profile, crf, preset, muxer, hdr)
    if source.timecode and not source.is_image:
        vargs += ["-timecode", source.timecode]

    # --- audio, kept streams ---
    aargs = _audio_args(options.acodec, muxer, audio, out)
    if options.language:
        aargs += ["-metadata:s:a:0", f"language={container_language(options.language, muxer)}"]
    aargs += ["-disposition:a:0", "default"]
    keep: list[str] = []
    if options.keep_streams and not source.is_image:
        keep, kept_notes = _keep_args(source, muxer)
        notes += kept_notes
    enc_w, enc_h = (width + width % 2, height + height % 2) if pad else (width, height)
    return EncodePlan(vcodec=vcodec, pix_fmt=fmt, depth=depth, muxer=muxer, pipe_args=tuple(pipe_args),
                      video_args=tuple(vargs), audio_args=tuple(aargs), keep_args=tuple(keep),
                      source=source.path if keep else None, encoded_size=(enc_w, enc_h), notes=tuple(notes),
                      colour_range=rng)


def _default_profile(vcodec: str, src: PixFmt | None) -> str:
    """ProRes 422 HQ, or 4444 for a 4:4:4/RGB source; DNxHR HQX (10-bit) for a deep source, 444 for 4:4:4, else HQ."""
    full = src is not None and src.chroma in ("444", "rgb")
    if vcodec == "prores_ks":
        return "4444" if full else "hq"
    if full:
        return "dnxhr_444"
    return "dnxhr_hqx" if src is not None and src.depth > 8 else "dnxhr_hq"


def _profile_for(vcodec: str, fmt: str) -> str | None:
    chroma, depth = _chroma_depth(fmt)
    if vcodec == "prores_ks":
        return "4444" if chroma in ("444", "rgb") else "hq"
    if chroma in ("444", "rgb"):
        return "dnxhr_444"
    return "dnxhr_hqx" if depth > 8 else "dnxhr_hq"


def _quality_args(vcodec: str, profile: str | None, crf: int, preset: str, muxer: str,
                  x265: list[str] | tuple[str, ...] = ()) -> list[str]:
    if vcodec in ("libx264", "libx265"):
        args = ["-crf", str(crf), *(["-preset", preset] if preset else [])]
        if vcodec == "libx265":
            args += ["-x265-params", ":".join(["log-level=error", *x265])]
            if muxer in ("mp4", "mov"):
                args += ["-tag:v", "hvc1"]  # the tag Apple players and editors read
        return args + (["-profile:v", profile] if profile else [])
    if vcodec == "prores_ks":
        return ["-profile:v", str(PRORES_PROFILES[profile or "hq"][0]), "-vendor", "apl0"]
    if vcodec == "dnxhd":
        return ["-profile:v", profile or "dnxhr_hq"]
    if vcodec == "libvpx-vp9":
        crf_vp9 = round(crf * 63 / 51)  # vp9's scale is 0..63
        return ["-crf", str(crf_vp9), "-b:v", "0", "-deadline", "good", "-cpu-used", "4", "-row-mt", "1",
                *(["-profile:v", profile] if profile else [])]
    if vcodec.endswith("_nvenc"):
        return ["-rc", "vbr", "-cq", str(crf), *(["-profile:v", profile] if profile else [])]
    return ["-profile:v", profile] if profile else []


def _audio_args(acodec: str, muxer: str, audio: AudioInfo | None, out: Path) -> list[str]:
    if acodec == "aac":
        return ["-c:a", "aac", "-b:a", AUDIO_BITRATE]
    if acodec == "pcm":
        return ["-c:a", "pcm_s16le"]
    if acodec == "flac":
        return ["-c:a", "flac"]
    if audio is not None and muxer in _COPYABLE_AUDIO and audio.codec not in _COPYABLE_AUDIO[muxer]:
        other = "use --acodec aac or flac, or a .mov or .mkv output" if audio.codec.startswith("pcm_") \
            else "use --acodec aac, pcm or flac, or a .mkv output"
        raise BadOption(f"--acodec copy: {audio.codec} audio does not go in {out.suffix} files", other)
    return ["-c:a", "copy"]


def _keep_args(source: VideoInfo, muxer: str) -> tuple[list[str], list[str]]:
    """Maps and codecs copying the source's audio tracks, subtitles and chapters (after the new audio, which
    stays the first and default track), the source's title and other tags, and the notes for what is dropped."""
    args: list[str] = ["-map_metadata", "{src}", "-map_chapters", "{src}"]
    notes: list[str] = []
    n_audio = 1  # output audio 0 is the new track
    n_sub = 0
    for st in source.streams:
        if st.kind == "Audio":
            args += ["-map", f"{{src}}:{st.index}"]
            if muxer in _COPYABLE_AUDIO and st.codec not in _COPYABLE_AUDIO[muxer]:
                args += [f"-c:a:{n_audio}", "aac", f"-b:a:{n_audio}", AUDIO_BITRATE]
                notes.append(f"audio track #{st.index} ({st.codec}) re-encoded to AAC: {muxer} cannot hold it")
            else:
                args += [f"-c:a:{n_audio}", "copy"]
            args += [f"-disposition:a:{n_audio}", "0"]
            n_audio += 1
        elif st.kind == "Subtitle":
            if st.codec in _TEXT_SUBS:
                codec = "mov_text" if muxer in ("mp4", "mov") else ("srt" if st.codec == "mov_text" else "copy")
            elif st.codec in _BITMAP_SUBS.get(muxer, ()):
                codec = "copy"
            else:
                notes.append(f"subtitle track #{st.index} ({st.codec}) dropped: {muxer} cannot hold it")
                continue
            args += ["-map", f"{{src}}:{st.index}", f"-c:s:{n_sub}", codec]
            n_sub += 1
    return args, notes


def describe(plan: EncodePlan) -> str:
    """One line for the closing summary: 'prores_ks yuv422p10le (10-bit) in mov'; a full-range YUV file says so
    ('yuv420p (8-bit, full range)': ffprobe calls that yuvj420p)."""
    pf = pix_fmt(plan.pix_fmt)
    full = plan.colour_range == "pc" and not (pf is not None and pf.rgb)
    bits = [f"{pf.depth}-bit"] if pf is not None else []
    bits += ["full range"] if full else []
    return f"{plan.vcodec} {plan.pix_fmt}{' (' + ', '.join(bits) + ')' if bits else ''} in {plan.muxer}"

