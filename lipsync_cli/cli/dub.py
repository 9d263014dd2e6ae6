"""CLI commands `lipsync dub` and `lipsync detect`."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from lipsync_cli.cli.app import app, console
from lipsync_cli.constants import CUT_THRESHOLD, DEFAULT_FPS, DEFAULT_PADS, MAX_GAP


def _console():
    return console(stderr=True)


@contextmanager
def progress_bars(quiet: bool):
    """Yield a ``progress(stage, advance, total)`` callback drawing one rich bar per stage (frames)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    labels = {"detect": "detecting faces", "dub": "dubbing", "enhance": "enhancing mouths"}
    with Progress(TextColumn("{task.description:>22}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[unit]}"), TimeRemainingColumn(), console=_console(),
                  transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, advance: int, total: int | None) -> None:
            if stage not in tasks:
                unit = "bytes" if stage.startswith("download") else "frames"
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total, unit=unit)
            bar.update(tasks[stage], advance=advance, total=total)

        yield progress


def _track_options(pads, no_smooth: bool, ref_box, max_gap: int):
    from lipsync_cli.faces.track import TrackOptions

    return TrackOptions(pads=tuple(pads), smooth=not no_smooth, ref_box=tuple(ref_box) if ref_box else None,
                        max_gap=max_gap)


def _cut_threshold(value: float) -> float | None:
    return None if value == 0 else value


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (interpreter start-up included), from Linux's /proc; None
    elsewhere."""
    import os

    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(after_name[19])  # field 22, starttime: clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def startup_line(startup: dict[str, float], before: float | None = None) -> str:
    """'start-up 2.9 s before the first frame: python + CLI 0.40, imports 1.81, ...' from ``DubResult.startup``
    and ``before``, the seconds the process ran before calling dub (None: unknown, left out)."""
    from lipsync_cli.dub import STARTUP_PHASES

    parts = ([f"python + CLI {before:.2f}"] if before is not None else []) + [
        f"{k} {startup[k]:.2f}" for k in STARTUP_PHASES if k in startup]
    total = startup.get("total", 0.0) + (before or 0.0)
    return f"start-up {total:.2f} s before the first frame: " + ", ".join(parts)


@app.command()
def dub(
    video: Path = typer.Argument(..., help="Video (any format ffmpeg reads) or still image (jpg/png/webp)."),
    audio: Optional[Path] = typer.Argument(None, help="Speech: any audio file ffmpeg reads, or a video's audio "
                                                      "track (not needed when each --speaker has their own)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output video (.mp4, .mov, .mkv: the container), "
                                                           "written only on success."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c",
                                              help="Generator weights (default: wav2lip_gan from the registry)."),
    arch: Optional[str] = typer.Option(None, help="wav2lip | attn_wav2lip | lpips_attn_wav2lip (default: from "
                                                  "the checkpoint)."),
    detector: str = typer.Option("s3fd", help="Face detector: s3fd | insightface."),
    detector_weights: Optional[Path] = typer.Option(None, help="Detector weights: s3fd .pth, or an insightface "
                                                                 "pack name / .onnx file."),
    det_size: Optional[int] = typer.Option(None, help="Longest side (px) of the frames the detector sees "
                                                       "(default 320 on CPU, 640 on GPU)."),
    detect_every: int = typer.Option(4, help="Detect faces every N frames and interpolate between (frames "
                                             "whose ends disagree are detected too); 1 detects every frame."),
    box: Optional[tuple[int, int, int, int]] = typer.Option(None, help="Fixed face box X1 Y1 X2 Y2 (pixels, x "
                                                                         "right, y down): skips detection."),
    track: Optional[Path] = typer.Option(None, help="Reuse face boxes from `lipsync detect -o track.json`."),
    pads: tuple[int, int, int, int] = typer.Option(DEFAULT_PADS, help="Pixels added TOP BOTTOM LEFT RIGHT "
                                                                      "around detected faces."),
    no_smooth: bool = typer.Option(False, "--no-smooth", help="Do not smooth face boxes over time."),
    ref_box: Optional[tuple[int, int, int, int]] = typer.Option(None, help="Dub the face nearest this box X1 Y1 "
                                                                            "X2 Y2 in each shot (default: the "
                                                                            "largest, most persistent face)."),
    max_gap: int = typer.Option(MAX_GAP, help="Frames the dubbed face may go undetected (hand, head turn, blur) "
                                              "and stay the same person; those frames pass through."),
    cut_threshold: float = typer.Option(CUT_THRESHOLD, help="Shot-cut sensitivity (PySceneDetect content score; "
                                                            "lower finds more cuts, 0 turns cut detection off)."),
    ref_face: Optional[list[str]] = typer.Option(
        None, metavar="PHOTO|VIDEO@SECONDS",
        help="Dub this person, in every shot: a photo, or VIDEO@SECONDS. Repeat it, one per --speaker."),
    ref_frame: Optional[int] = typer.Option(None, help="With --ref-box: the person is the face in that box on "
                                                       "frame N of VIDEO (identity, across cuts)."),
    speaker: Optional[list[str]] = typer.Option(
        None, metavar="AUDIO|auto",
        help="AUDIO of one person (pair each with a --ref-face, in order), or `auto`: dub whoever speaks in "
             "VIDEO's own audio."),
    speakers: Optional[Path] = typer.Option(None, help="speakers.yaml: one entry per person (audio, ref_face or "
                                                       "ref_box + ref_frame, threshold)."),
    mix: Optional[Path] = typer.Option(None, help="The output's audio with several speakers (default: their "
                                                  "tracks summed with headroom)."),
    recognition_weights: Optional[str] = typer.Option(None, help="ArcFace weights: an insightface pack name or "
                                                                 "a .onnx file (default buffalo_l)."),
    identity_threshold: Optional[float] = typer.Option(None, help="Cosine distance beyond which a face is not "
                                                                  "the reference's person (default 0.6)."),
    syncnet: Optional[Path] = typer.Option(None, help="SyncNet v2 weights for --speaker auto (default: the "
                                                      "registry's syncnet_v2)."),
    strict: bool = typer.Option(False, help="Fail, naming the frames, when a frame has no face (default: those "
                                            "frames pass through unchanged)."),
    batch_size: Optional[int] = typer.Option(None, help="Faces per generator batch (default 16 on CPU, 128 on "
                                                        "GPU; halved automatically on GPU out-of-memory)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps (auto: cuda > mps > cpu)."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16 (auto: bf16 on CPUs with native bf16 "
                                               "and on CUDA GPUs that have it, fp16 on other GPUs, else fp32)."),
    blend: str = typer.Option("feather", help="feather (soft lower-face mask) | paste (exactly Wav2Lip)."),
    enhance: bool = typer.Option(False, "--enhance", help="Sharpen the dubbed mouth with a face restorer (GFPGAN "
                                                          "v1.4 by default; ~1 s per face on a 2-core CPU)."),
    enhancer_weights: Optional[Path] = typer.Option(None, help="Restorer for --enhance: a GFPGANv1.4-format .pth or "
                                                                "an ONNX restorer (GFPGAN, CodeFormer, GPEN, "
                                                                "RestoreFormer++; 1x3xNxN RGB in [-1, 1])."),
    enhance_strength: float = typer.Option(1.0, help="Blend weight of the restored mouth, 0..1."),
    enhance_noise: str = typer.Option("fixed", help="GFPGAN's noise: fixed (stored, no flicker) | random (as "
                                                    "GFPGANer: changes every frame)."),
    loop: str = typer.Option("pingpong", help="When the audio outlasts the video: pingpong (no jump cut) | "
                                             "forward (as Wav2Lip)."),
    fps: float = typer.Option(DEFAULT_FPS, help="Frame rate of the video made from a still image."),
    crf: int = typer.Option(18, help="Quality of libx264/libx265/libvpx-vp9/nvenc (0 lossless .. 51 worst)."),
    preset: str = typer.Option("veryfast", help="x264/x265 preset (ultrafast .. veryslow)."),
    vcodec: str = typer.Option("libx264", help="libx264 | libx265 | prores_ks | dnxhd (DNxHR) | libvpx-vp9 | a "
                                               "hardware encoder of this ffmpeg (h264_nvenc, hevc_nvenc, "
                                               "h264_videotoolbox...)."),
    pix_fmt: Optional[str] = typer.Option(None, help="Output pixel format, e.g. yuv420p, yuv422p10le (default: "
                                                     "the source's subsampling and bit depth)."),
    profile: Optional[str] = typer.Option(None, help="Codec profile: ProRes proxy|lt|standard|hq|4444|4444xq, "
                                                     "DNxHR dnxhr_lb|sq|hq|hqx|444, x264/x265 profiles."),
    acodec: str = typer.Option("aac", help="New audio track: aac | pcm | flac | copy (the audio file's own)."),
    keep_streams: bool = typer.Option(False, "--keep-streams", help="Also copy the source's audio tracks, "
                                                                    "subtitles and chapters (after the new "
                                                                    "audio, which stays first and default)."),
    language: Optional[str] = typer.Option(None, help="ISO 639-2 language of the new audio track (eng, fra...)."),
    # --- like a dubbing studio: pauses, only some lines, timelines (DubOptions' block of the same name) ---
    silence: str = typer.Option("hold", help="The mouth in the speech's pauses: hold (closed and still: one silent "
                                             "mouth per pause) | model (the generator on the silence) | source "
                                             "(the original frames)."),
    silence_fade: int = typer.Option(3, help="Frames of cross-fade at each edge of a pause or a segment."),
    vad: str = typer.Option("silero", help="Speech activity: silero (Silero VAD, packaged) | energy (level)."),
    min_pause: float = typer.Option(0.3, help="Seconds: shorter pauses stay speech (a breath keeps the mouth)."),
    segments: Optional[Path] = typer.Option(None, help="Dub only these lines: CSV/JSON (start, end, audio, "
                                                       "offset, speaker), SRT/ASS/VTT subtitles, or a .otio/.edl "
                                                       "timeline; the rest is the source's picture and sound."),
    start: Optional[str] = typer.Option(None, help="Dub from here (seconds, HH:MM:SS.mmm or HH:MM:SS:FF)."),
    end: Optional[str] = typer.Option(None, help="Dub up to here (seconds or timecode)."),
    me: Optional[Path] = typer.Option(None, help="Music-and-effects stem: under the new lines (with --segments "
                                                 "or --start/--end)."),
    timeline_out: Optional[Path] = typer.Option(None, help="Also write what was dubbed as a timeline: .otio "
                                                           "(OpenTimelineIO) or .edl (CMX 3600)."),
    offline: bool = typer.Option(False, "--offline", help="Never download weights (also LIPSYNC_OFFLINE=1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    stats: bool = typer.Option(False, "--stats", help="End with each stage's busy time and each queue's "
                                                     "occupancy: which stage limits the run."),
) -> None:
    """Re-draw the speaker's mouth in VIDEO to match AUDIO and write the result to -o."""
    from lipsync_cli.dub import DubOptions
    from lipsync_cli.dub import dub as run_dub
    from lipsync_cli.output_format import EncodeOptions
    from lipsync_cli.speakers import setup_from_options

    setup = setup_from_options(speaker=speaker or (), ref_face=ref_face or (), ref_box=ref_box, ref_frame=ref_frame,
                               speakers_file=speakers, mix=mix, recognition_weights=recognition_weights,
                               identity_threshold=identity_threshold, syncnet=syncnet)
    if setup is not None and ref_frame is not None:
        ref_box = None  # the box names the person on that frame, not a position in every shot
    opts = DubOptions(
        checkpoint=checkpoint, arch=arch, detector=detector, detector_weights=detector_weights, det_size=det_size,
        detect_every=detect_every, cut_threshold=_cut_threshold(cut_threshold), box=tuple(box) if box else None,
        track=track, track_options=_track_options(pads, no_smooth, ref_box, max_gap),
        strict=strict, batch_size=batch_size, device=device, precision=precision, blend=blend, loop=loop, fps=fps,
        crf=crf, preset=preset, offline=True if offline else None, speakers=setup,
        enhance=enhance, enhancer_weights=enhancer_weights, enhance_strength=enhance_strength,
        enhance_noise=enhance_noise,
        silence=silence, silence_fade=silence_fade, vad=vad, min_pause=min_pause, segments=segments, start=start,
        end=end, me=me, timeline_out=timeline_out,
        encode=EncodeOptions(vcodec=vcodec, pix_fmt=pix_fmt, profile=profile, acodec=acodec,
                             keep_streams=keep_streams, language=language),
    )
    opts.validate(output)  # every option mistake is reported before the video is opened
    console = _console()

    def notify(msg: str) -> None:
        console.print(msg, highlight=False)

    before = seconds_since_process_start()  # the interpreter, the CLI's imports and parsing
    with progress_bars(quiet) as progress:
        result = run_dub(video, audio, output, opts, progress=progress, notify=notify)
    if quiet:
        return
    if result.no_face_frames:
        console.print(f"{len(result.no_face_frames)} frame(s) had no face and passed through unchanged")
    rate = result.stage_fps()
    stages = "  ".join(f"{k} {v:.1f}" for k, v in rate.items() if result.stage_frames.get(k))
    console.print(f"wrote {result.output}: {result.frames} frames at {result.fps:g} fps "
                  f"({result.frames / result.fps:.2f} s), {result.faces} faces redrawn; {result.encoding}")
    console.print(f"{result.device}/{result.precision} batch {result.batch_size}: {result.wall_seconds:.1f} s, "
                  f"{result.frames / result.wall_seconds:.1f} frames/s end to end, "
                  f"{result.realtime_factor:.2f}x real time; stage frames/s: {stages}", highlight=False)
    console.print(startup_line(result.startup, before), highlight=False)
    if result.pauses:
        console.print(f"--silence {opts.silence}: {len(result.pauses)} pause(s), "
                      f"{sum(b - a for a, b in result.pauses)} frames", highlight=False)
    if stats:
        for line in result.stats_lines():
            console.print(line, highlight=False, markup=False)


@app.command()
def detect(
    video: Path = typer.Argument(..., help="Video or still image."),
    output: Path = typer.Option(..., "-o", "--output", help="Track file to write (JSON)."),
    detector: str = typer.Option("s3fd", help="Face detector: s3fd | insightface."),
    detector_weights: Optional[Path] = typer.Option(None, help="Detector weights (s3fd .pth, insightface pack "
                                                                 "name or .onnx)."),
    det_size: Optional[int] = typer.Option(None, help="Longest side (px) of the frames the detector sees "
                                                       "(default 320 on CPU, 640 on GPU)."),
    detect_every: int = typer.Option(4, help="Detect every N frames, interpolating between (1: every frame)."),
    cut_threshold: float = typer.Option(CUT_THRESHOLD, help="Shot-cut sensitivity (PySceneDetect content score; "
                                                            "0 turns cut detection off)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps."),
    identity: bool = typer.Option(False, "--identity", help="Store face embeddings (ArcFace) in the track, for "
                                                           "`lipsync dub --track --ref-face`."),
    speakers: bool = typer.Option(False, "--speakers", help="Score who speaks in the video's own audio "
                                                           "(SyncNet v2) and store the scores, for --speaker auto."),
    ref_face: Optional[list[str]] = typer.Option(
        None, metavar="PHOTO|VIDEO@SECONDS",
        help="Reference faces (photo or VIDEO@SECONDS): the preview shows each face's distance to them."),
    speakers_file: Optional[Path] = typer.Option(None, help="A dub's speakers.yaml: the preview shows each face's "
                                                            "distance to its speakers' reference faces."),
    recognition_weights: Optional[str] = typer.Option(None, help="ArcFace weights: pack name or .onnx."),
    syncnet: Optional[Path] = typer.Option(None, help="SyncNet v2 weights for --speakers."),
    preview: Optional[Path] = typer.Option(None, help="Also write OUT.mp4: every face track's box, id, identity "
                                                      "distance and speaking score drawn on the frames."),
    offline: bool = typer.Option(False, "--offline", help="Never download weights."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Detect the faces of every frame once and save them, for `lipsync dub --track` (one video, many dubs)."""
    from lipsync_cli.device import resolve_device
    from lipsync_cli.dub import DubOptions, detect_track
    from lipsync_cli.errors import BadOption, InputNotFound

    if not video.is_file():
        raise InputNotFound(f"video file not found: {video}")
    if output.suffix.lower() != ".json":
        raise BadOption(f"track output {output} should end in .json")
    opts = DubOptions(detector=detector, detector_weights=detector_weights, det_size=det_size,
                      detect_every=detect_every, cut_threshold=_cut_threshold(cut_threshold),
                      offline=True if offline else None)
    opts.validate()
    setup = None
    if identity or speakers or ref_face or speakers_file:  # checked before the detection pass
        from lipsync_cli.speakers import Reference, SpeakerSetup, SpeakerSpec, annotate_track

        top = {"recognition_weights": recognition_weights, "syncnet": syncnet}
        if speakers_file is not None:
            setup = SpeakerSetup.from_yaml(speakers_file, **top)
        else:
            setup = SpeakerSetup(speakers=tuple(SpeakerSpec(reference=Reference.parse(r), name=r)
                                                for r in ref_face or ()), **top)
        for spec in setup.speakers:
            if spec.reference is not None:
                spec.reference.validate()
    if preview is not None and preview.suffix.lower() not in (".mp4", ".mov", ".mkv", ".m4v"):
        raise BadOption(f"preview {preview} should end in .mp4")
    console = _console()
    with progress_bars(quiet) as progress:
        track = detect_track(video, opts, device=resolve_device(device), progress=progress,
                             notify=lambda m: console.print(m, highlight=False))
        distances = None
        if setup is not None:
            distances = annotate_track(video, track, identity=identity, speaking=speakers, setup=setup,
                                       detector=detector, detector_weights=detector_weights,
                                       device=resolve_device(device), offline=True if offline else None,
                                       notify=lambda m: console.print(m, highlight=False), progress=progress)
    track.save(output)
    if preview is not None:
        from lipsync_cli.faces.preview import write_preview

        write_preview(video, track, preview, distances)
    if not quiet:
        with_face = sum(1 for f in track.faces if len(f))
        console.print(f"wrote {output}: {len(track)} frames, {with_face} with at least one face"
                      + (f"; preview {preview}" if preview is not None else ""))
