"""`lipsync batch` / ``run_batch``: manifests, work done once, resume, interrupts, shards, Ray; fake weights, tiny
clips (synthetic 160x120, 0.4 s with a fixed box; a real 0.5 s clip of ../shared/testmedia at 320 px with the SCRFD
detector), speech of 0.2-0.4 s. One module-scoped batch (``first_run``) is shared by the tests of its outcome,
its rerun and the Ray executor."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import SCRFD_ONNX, TESTMEDIA
from synth import make_audio, make_image, make_video, run_ffmpeg

BOX = "40 20 120 100"


def _events(outdir: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(outdir.glob("journal*.jsonl")) for line in p.read_text().splitlines()]


def _leftovers(outdir: Path) -> list[str]:
    return sorted(p.name for p in outdir.rglob("*") if ".lipsync-" in p.name)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("batchmedia")
    make_video(d / "talk.mp4", seconds=0.4, fps=25)
    make_audio(d / "fr.wav", seconds=0.4)  # 10 frames at 25 fps, 12 at 30
    make_audio(d / "de.wav", seconds=0.2)  # 5 frames at 25 fps, 6 at 30
    return d


@pytest.fixture(scope="module")
def real_clip(clips):
    src = TESTMEDIA / "liveportrait_s18.mp4"
    if not src.exists() or not SCRFD_ONNX.exists():
        pytest.skip("../shared testmedia / detectors absent")
    out = clips / "portrait.mp4"
    run_ffmpeg(["-i", str(src), "-t", "0.5", "-vf", "scale=320:-2", "-an", "-c:v", "libx264", "-preset", "ultrafast",
                str(out)])
    return out


def _write_csv(path: Path, rows: list[str], header: str = "video,audio,box") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# the public API and manifests (no dub runs)


def test_public_api_names():
    import importlib

    import lipsync_cli

    importlib.import_module("lipsync_cli.dub")  # the submodule, imported: the package's `dub` stays the function
    from lipsync_cli import DubOptions, detect, dub, run_batch
    from lipsync_cli.batch.run import run_batch as run_batch_impl
    from lipsync_cli.tracks import detect as detect_impl

    assert {"dub", "DubOptions", "detect", "run_batch", "BatchOptions"} <= set(lipsync_cli.__all__)
    assert callable(dub) and dub.__module__ == "lipsync_cli.dub" and lipsync_cli.dub is dub
    assert DubOptions().blend == "feather"
    assert detect is detect_impl and run_batch is run_batch_impl
    with pytest.raises(AttributeError):
        lipsync_cli.no_such_name  # noqa: B018


def test_csv_jsonl_yaml_give_the_same_jobs_with_paths_relative_to_the_manifest(clips, tmp_path):
    from lipsync_cli.batch import load_manifest

    sub = tmp_path / "m"
    sub.mkdir()
    for p in ("talk.mp4", "fr.wav"):
        (sub / p).symlink_to(clips / p)
    _write_csv(sub / "jobs.csv", [f"talk.mp4,fr.wav,{BOX}", "talk.mp4,fr.wav,", "talk.mp4,fr.wav,"],
               header="video,audio,box")
    (sub / "jobs.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"video": "talk.mp4", "audio": "fr.wav", "box": [40, 20, 120, 100]},
        {"video": "talk.mp4", "audio": "fr.wav"}, {"video": "talk.mp4", "audio": "fr.wav"}]) + "\n")
    (sub / "jobs.yaml").write_text("jobs:\n  - {video: talk.mp4, audio: fr.wav, box: 40 20 120 100}\n"
                                   "  - video: talk.mp4\n    audio: fr.wav\n  - {video: talk.mp4, audio: fr.wav}\n")
    got = {}
    for name in ("jobs.csv", "jobs.jsonl", "jobs.yaml"):
        m = load_manifest(sub / name, tmp_path / "out", defaults={"crf": "23"})
        got[name] = [(j.id, j.video, j.audio, j.options.box, j.options.crf) for j in m.jobs]
        lines = {"jobs.csv": [2, 3, 4], "jobs.jsonl": [1, 2, 3], "jobs.yaml": [2, 3, 5]}[name]
        assert [j.line for j in m.jobs] == lines
    assert got["jobs.csv"] == got["jobs.jsonl"] == got["jobs.yaml"]
    ids = [g[0] for g in got["jobs.csv"]]
    assert ids == ["talk.fr.mp4", "talk.fr-2.mp4", "talk.fr-3.mp4"]  # derived names never collide
    assert got["jobs.csv"][0][1] == sub / "talk.mp4" and got["jobs.csv"][0][3] == (40, 20, 120, 100)
    assert {g[4] for g in got["jobs.csv"]} == {23}  # the command line's default


def test_malformed_rows_are_reported_with_line_numbers_and_nothing_runs(clips, tmp_path):
    from lipsync_cli.batch import BatchOptions, ManifestError, run_batch

    man = _write_csv(clips / "bad.csv", ["talk.mp4,fr.wav,40 20 120 100,feather",
                                         "talk.mp4,fr.wav,40 20 120,feather",
                                         "talk.mp4,de.wav,,smudge",
                                         "talk.mp4,de.wav,,paste"], header="video,audio,box,blend")
    out = tmp_path / "out"
    with pytest.raises(ManifestError) as err:
        run_batch(man, BatchOptions(outdir=out))
    assert [n for n, _ in err.value.problems] == [3, 4]
    assert "box" in err.value.problems[0][1] and "smudge" in err.value.problems[1][1]
    assert not out.exists()  # nothing ran, nothing written
    bad_col = _write_csv(clips / "badcol.csv", ["talk.mp4,fr.wav,1"], header="video,audio,colour")
    with pytest.raises(ManifestError, match="line 1: unknown column.s. colour in the header"):
        run_batch(bad_col, BatchOptions(outdir=out))


def test_cli_skip_invalid_reports_skipped_rows(clips, tmp_path, fake_ckpt):
    from lipsync_cli.cli import run

    # a video that is not there and a bad value: both rows are malformed, checked before any work
    man = _write_csv(clips / "skip.csv", [f"absent.mp4,de.wav,{BOX},8", "talk.mp4,de.wav,,-3"],
                     header="video,audio,box,batch_size")
    out = tmp_path / "out"
    assert run(["batch", str(man), "-o", str(out), "-c", str(fake_ckpt("wav2lip")), "--offline", "-q"]) == 2
    assert not out.exists()
    code = run(["batch", str(man), "-o", str(out), "-c", str(fake_ckpt("wav2lip")), "--offline", "-q",
                "--skip-invalid", "--device", "cpu"])
    report = json.loads((out / "report.json").read_text())
    assert code == 0
    assert [(r["line"], r["state"]) for r in report["jobs"]] == [(2, "skipped"), (3, "skipped")]
    assert "absent.mp4 does not exist" in report["jobs"][0]["error"] and "batch-size" in report["jobs"][1]["error"]


def test_encode_options_are_columns_checked_with_the_dub_rules(clips, tmp_path):
    from lipsync_cli.batch import ManifestError, load_manifest

    header = "video,audio,vcodec,pix_fmt,preset,crf,acodec,keep_streams,language,output"
    rows = ["talk.mp4,fr.wav,libx265,yuv420p10le,ultrafast,28,pcm,yes,fra,",  # 2: fine; named .mov (PCM: not in .mp4)
            "talk.mp4,de.wav,prores_ks,,,,,,deu,",  # 3: fine; named .mov (ProRes does not go in .mp4)
            "talk.mp4,fr.wav,h266,,,,,,,",  # 4
            "talk.mp4,fr.wav,,,warp,,,,,",  # 5
            "talk.mp4,fr.wav,,,,,,,french,",  # 6
            "talk.mp4,fr.wav,prores_ks,,,,,,,p.mp4",  # 7: the container cannot hold it
            "talk.mp4,fr.wav,,yuv999,,,,,,",  # 8
            "talk.mp4,fr.wav,,,,,,perhaps,,",  # 9
            "talk.mp4,fr.wav,,,,60,,,,"]  # 10
    man = _write_csv(tmp_path / "enc.csv", [r.replace("talk.mp4", str(clips / "talk.mp4"))
                                             .replace("fr.wav", str(clips / "fr.wav"))
                                             .replace("de.wav", str(clips / "de.wav")) for r in rows], header)
    with pytest.raises(ManifestError) as err:
        load_manifest(man, tmp_path / "out")
    problems = dict(err.value.problems)
    assert sorted(problems) == [4, 5, 6, 7, 8, 9, 10]
    assert "h266" in problems[4] and "warp" in problems[5] and "french" in problems[6]
    assert "prores_ks does not go in .mp4" in problems[7] and "yuv999" in problems[8]
    assert "keep_streams" in problems[9] and "crf" in problems[10]
    m = load_manifest(man, tmp_path / "out", skip_invalid=True)
    assert [j.line for j in m.jobs] == [2, 3] and len(m.invalid) == 7
    hevc, prores = m.jobs
    assert (hevc.id, hevc.options.encode.vcodec, hevc.options.encode.pix_fmt, hevc.options.preset,
            hevc.options.crf, hevc.options.encode.acodec, hevc.options.encode.keep_streams,
            hevc.options.encode.language) == ("talk.fr.mov", "libx265", "yuv420p10le", "ultrafast", 28, "pcm", True,
                                              "fra")
    assert (prores.id, prores.options.encode.vcodec, prores.options.encode.language) == ("talk.de.mov", "prores_ks",
                                                                                         "deu")


def test_speaker_options_are_columns_as_on_the_dub_command_line(clips, tmp_path):
    from lipsync_cli.batch import ManifestError, load_manifest

    sub = tmp_path / "m"
    sub.mkdir()
    for name in ("talk.mp4", "fr.wav", "de.wav"):
        (sub / name).symlink_to(clips / name)
    make_image(sub / "anna.png")
    rows = [{"video": "talk.mp4", "audio": "fr.wav", "ref_face": "anna.png"},  # 1: one person, the row's audio
            {"video": "talk.mp4", "audio": "fr.wav", "speaker": ["fr.wav", "de.wav"],  # 2: two people, own audio
             "ref_face": ["anna.png", "talk.mp4@0.2"], "identity_threshold": 0.5},
            {"video": "talk.mp4", "audio": "fr.wav", "speaker": "auto"},  # 3
            {"video": "talk.mp4", "audio": "fr.wav", "ref_box": "40 20 120 100", "ref_frame": 3},  # 4: box on frame 3
            {"video": "talk.mp4", "audio": "fr.wav", "speaker": "fr.wav;de.wav", "ref_face": "anna.png"},  # 5: bad
            {"video": "talk.mp4", "audio": "fr.wav", "ref_face": "nobody.png"}]  # 6: no such photo
    (sub / "jobs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ManifestError) as err:  # parsing only: whether ArcFace is installed is not the question
        load_manifest(sub / "jobs.jsonl", tmp_path / "out", check_files=False)
    problems = dict(err.value.problems)
    assert sorted(problems) == [5, 6]
    assert "2 --speaker track(s) but 1 reference face(s)" in problems[5] and "nobody.png" in problems[6]
    one, two, auto, framed = (j.options for j in load_manifest(sub / "jobs.jsonl", tmp_path / "out",
                                                                skip_invalid=True, check_files=False).jobs)
    assert [(s.audio, s.reference.photo) for s in one.speakers.speakers] == [(None, sub / "anna.png")]
    assert [(s.audio, s.reference.photo, s.reference.video, s.reference.seconds) for s in two.speakers.speakers] == [
        (sub / "fr.wav", sub / "anna.png", None, None), (sub / "de.wav", None, sub / "talk.mp4", 0.2)]
    assert two.speakers.identity_threshold == 0.5
    assert auto.speakers.auto and not auto.speakers.speakers
    ref = framed.speakers.speakers[0].reference
    assert (ref.box, ref.frame) == ((40, 20, 120, 100), 3) and framed.track_options.ref_box is None


# ---------------------------------------------------------------------------------------------------------------
# one batch: box jobs, a real clip in two languages with detection, a broken row


@pytest.fixture(scope="module")
def first_run(clips, real_clip, fake_ckpt, tmp_path_factory):
    import lipsync_cli.faces.track as track_module
    from lipsync_cli import DubOptions, run_batch
    from lipsync_cli.batch import BatchOptions

    man = clips / "jobs.csv"
    (clips / "broken.mp4").write_bytes(b"not a video")  # there and readable (checked first), fails when it runs
    _write_csv(man, [f"talk.mp4,fr.wav,{BOX},,", f"talk.mp4,de.wav,{BOX},,", "portrait.mp4,fr.wav,,,",
                     "portrait.mp4,de.wav,,,", f"broken.mp4,fr.wav,{BOX},,", f"talk.mp4,de.wav,{BOX},prores_ks,fra"],
               header="video,audio,box,vcodec,language")
    out = tmp_path_factory.mktemp("batch") / "out"
    calls = []  # one per detection pass (lipsync_cli.analysis -> faces.track.track_frames)
    real = track_module.track_frames
    track_module.track_frames = lambda frames, det, info, *a, **k: calls.append(info.path) or real(frames, det, info,
                                                                                                   *a, **k)
    try:
        opts = BatchOptions(outdir=out, dub=DubOptions(checkpoint=fake_ckpt("wav2lip"), device="cpu", batch_size=8,
                                                       detector="insightface", detector_weights=SCRFD_ONNX,
                                                       det_size=160, offline=True))
        report = run_batch(man, opts)
    finally:
        track_module.track_frames = real
    return {"man": man, "out": out, "report": report, "detect_calls": calls, "opts": opts}


def test_batch_dubs_every_good_job_and_fails_the_broken_one_alone(first_run):
    from lipsync_cli.media.probe import probe

    report, out = first_run["report"], first_run["out"]
    states = {r["job"]: r["state"] for r in report.rows}
    assert states == {"talk.fr.mp4": "done", "talk.de.mp4": "done", "portrait.fr.mp4": "done",
                      "portrait.de.mp4": "done", "broken.fr.mp4": "failed", "talk.de.mov": "done"}
    broken = next(r for r in report.rows if r["job"] == "broken.fr.mp4")
    assert broken["line"] == 6 and "broken.mp4" in broken["error"]
    assert report.exit_code == 1 and report.summary["done"] == 5 and report.summary["failed"] == 1
    assert probe(out / "talk.fr.mp4").n_frames == 10 and probe(out / "talk.de.mp4").n_frames == 5  # 0.4 / 0.2 s
    assert probe(out / "portrait.fr.mp4").n_frames == 12 and probe(out / "portrait.de.mp4").n_frames == 6  # 30 fps
    assert not (out / "broken.fr.mp4").exists() and _leftovers(out) == []
    # the encode columns of row 7: ProRes in a .mov (the derived name's container), the audio tagged French
    prores = probe(out / "talk.de.mov")
    assert (prores.codec, prores.n_frames) == ("prores", 5) and probe(out / "talk.de.mp4").codec == "h264"
    assert [(st.codec, st.language) for st in prores.streams if st.kind == "Audio"] == [("aac", "fra")]
    saved = json.loads((out / "report.json").read_text())
    assert saved["summary"]["failed"] == 1 and len(saved["jobs"]) == 6
    assert (out / "report.csv").read_text().splitlines()[0].startswith("job,line,state")


def test_detection_runs_once_per_video_and_the_track_is_reused(first_run):
    report = first_run["report"]
    assert [Path(v).name for v in first_run["detect_calls"]] == ["portrait.mp4"]  # two languages, one detection
    tracks_of = {r["job"]: r["track"] for r in report.rows if r["state"] == "done"}
    assert tracks_of == {"talk.fr.mp4": "box", "talk.de.mp4": "box", "portrait.fr.mp4": "detected",
                         "portrait.de.mp4": "cached", "talk.de.mov": "box"}
    faces = [r for r in report.rows if r["job"].startswith("portrait")]
    assert all(r["frames"] > 0 for r in faces)


def _cache_files(outdir: Path) -> list[str]:
    return sorted(p.name for p in (outdir / ".cache" / "tracks").iterdir())


def test_the_track_cache_keeps_its_tracks_and_no_lock_files(first_run):
    files = _cache_files(first_run["out"])
    assert len(files) == 1 and files[0].endswith(".track.json"), files  # the portrait's track, no `.KEY.lock`


def test_the_worker_keeps_one_prepared_generator_for_every_job(first_run):
    from lipsync_cli.batch import worker
    from lipsync_cli.device import resolve_precision
    from lipsync_cli.render import prepare_for_inference

    precision = resolve_precision(first_run["opts"].dub.precision, "cpu")
    models = [m for (ckpt, *_), m in worker._models.items() if ckpt == str(first_run["opts"].dub.checkpoint)]
    assert len(models) == 1 and models[0]._prepared_for == ("cpu", precision)  # folded and cast once, for all 5 jobs
    assert prepare_for_inference(models[0], "cpu", precision) is models[0]  # dub uses it as it is: no copy per job


def test_rerun_does_nothing_and_still_exits_1_for_the_failure(first_run, fake_ckpt):
    from lipsync_cli.cli import run

    out = first_run["out"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    n_events = len(_events(out))
    code = run(["batch", str(first_run["man"]), "-o", str(out), "-c", str(fake_ckpt("wav2lip")), "--device", "cpu",
                "--batch-size", "8", "--set", "detector=insightface", "--set", f"detector_weights={SCRFD_ONNX}",
                "--set", "det_size=160", "--offline", "-q"])
    assert code == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == before
    assert len(_events(out)) == n_events  # no job pending, running or re-run
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["ran"] == 0 and report["summary"]["done"] == 5
    # --retry-failed runs the failed job alone again (it fails again: the video is still broken)
    code = run(["batch", str(first_run["man"]), "-o", str(out), "-c", str(fake_ckpt("wav2lip")), "--device", "cpu",
                "--batch-size", "8", "--set", "detector=insightface", "--set", f"detector_weights={SCRFD_ONNX}",
                "--set", "det_size=160", "--offline", "-q", "--retry-failed"])
    report = json.loads((out / "report.json").read_text())
    assert code == 1 and report["summary"]["ran"] == 1 and report["summary"]["failed"] == 1
    assert [e["job"] for e in _events(out)[n_events:] if e["state"] == "running"] == ["broken.fr.mp4"]


def test_a_changed_input_reruns_only_its_job(clips, tmp_path, fake_ckpt):
    from lipsync_cli import DubOptions, run_batch
    from lipsync_cli.batch import BatchOptions

    make_audio(tmp_path / "de.wav", seconds=0.2)
    man = _write_csv(tmp_path / "j.csv", [f"{clips}/talk.mp4,{clips}/fr.wav,{BOX}", f"{clips}/talk.mp4,de.wav,{BOX}"])
    opts = BatchOptions(outdir=tmp_path / "out", dub=DubOptions(checkpoint=fake_ckpt("wav2lip"), device="cpu",
                                                                 batch_size=8, offline=True))
    assert run_batch(man, opts).summary["ran"] == 2
    make_audio(tmp_path / "de.wav", seconds=0.32)  # replaced: 8 frames instead of 5
    again = run_batch(man, opts)
    assert again.summary["ran"] == 1
    row = next(r for r in again.rows if r["job"] == "talk.de.mp4")
    assert row["state"] == "done" and row["frames"] == 8 and row["note"] == "audio changed"


# ---------------------------------------------------------------------------------------------------------------
# interrupts, shards, executors


def test_interrupt_leaves_no_partial_output_and_a_rerun_finishes_the_rest(clips, tmp_path, fake_ckpt):
    from lipsync_cli import DubOptions, run_batch
    from lipsync_cli.batch import BatchOptions

    man = _write_csv(tmp_path / "j.csv", [f"{clips}/talk.mp4,{clips}/fr.wav,{BOX}",
                                          f"{clips}/talk.mp4,{clips}/de.wav,{BOX}"])
    out = tmp_path / "out"
    opts = BatchOptions(outdir=out, dub=DubOptions(checkpoint=fake_ckpt("wav2lip"), device="cpu", batch_size=4,
                                                   offline=True))
    seen = {"frames": 0}

    def on_event(kind, job_id, data):
        if kind == "progress" and job_id == "talk.de.mp4":
            seen["frames"] += data[1]
            raise KeyboardInterrupt  # Ctrl-C in the middle of the second job (after its first batch)

    with pytest.raises(KeyboardInterrupt):
        run_batch(man, opts, on_event=on_event)
    assert seen["frames"] == 4
    assert (out / "talk.fr.mp4").exists() and not (out / "talk.de.mp4").exists() and _leftovers(out) == []
    states = {}
    for ev in _events(out):
        states[ev["job"]] = ev["state"]
    assert states == {"talk.fr.mp4": "done", "talk.de.mp4": "pending"}
    report = run_batch(man, opts)
    assert report.summary["ran"] == 1 and report.summary["done"] == 2 and report.exit_code == 0
    assert (out / "talk.de.mp4").exists()


def test_shards_together_do_every_job_exactly_once(clips, tmp_path, fake_ckpt):
    from lipsync_cli.cli import run

    man = _write_csv(tmp_path / "j.csv", [f"{clips}/talk.mp4,{clips}/de.wav,{BOX}"] * 3)
    out = tmp_path / "out"
    common = ["-o", str(out), "-c", str(fake_ckpt("wav2lip")), "--device", "cpu", "--offline", "-q"]
    assert run(["batch", str(man), "--shard", "1/2", *common]) == 0
    assert run(["batch", str(man), "--shard", "2/2", *common]) == 0
    done = [ev["job"] for ev in _events(out) if ev["state"] == "done"]
    assert sorted(done) == ["talk.de-2.mp4", "talk.de-3.mp4", "talk.de.mp4"]  # each once
    assert (out / "journal.shard-1-of-2.jsonl").exists() and (out / "journal.shard-2-of-2.jsonl").exists()
    s1 = json.loads((out / "report.shard-1-of-2.json").read_text())
    assert [r["job"] for r in s1["jobs"]] == ["talk.de.mp4", "talk.de-3.mp4"]  # rows 0 and 2
    assert run(["batch", "--merge-reports", "-o", str(out), "-q"]) == 0
    merged = json.loads((out / "report.json").read_text())
    assert merged["summary"]["done"] == 3 and merged["summary"]["jobs"] == 3
    assert run(["batch", str(man), *common]) == 0  # the plain rerun sees the shards' work: nothing to do
    assert json.loads((out / "report.json").read_text())["summary"]["ran"] == 0


def test_local_workers_get_their_own_gpu_and_bounded_threads():
    from lipsync_cli.batch import LocalExecutor

    ex = LocalExecutor(3, gpus=["0", "1"], threads=2)
    envs = [ex._env(k) for k in range(3)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"]
    assert all(e["OMP_NUM_THREADS"] == "2" and e["MKL_NUM_THREADS"] == "2" for e in envs)
    assert "CUDA_VISIBLE_DEVICES" not in LocalExecutor(2, gpus=[], threads=1)._env(0)


@pytest.mark.slow
def test_two_local_worker_processes_give_the_inline_outputs(clips, tmp_path, fake_ckpt):
    from lipsync_cli import DubOptions, run_batch
    from lipsync_cli.batch import BatchOptions, LocalExecutor
    from lipsync_cli.media.probe import probe

    man = _write_csv(tmp_path / "j.csv", [f"{clips}/talk.mp4,{clips}/fr.wav,{BOX}",
                                          f"{clips}/talk.mp4,{clips}/de.wav,{BOX}",
                                          f"{clips}/broken.mp4,{clips}/de.wav,{BOX}"])
    (clips / "broken.mp4").write_bytes(b"not a video")  # passes the checks, fails in its worker
    opts = BatchOptions(outdir=tmp_path / "out", dub=DubOptions(checkpoint=fake_ckpt("wav2lip"), device="cpu",
                                                                 batch_size=8, offline=True))
    report = run_batch(man, opts, LocalExecutor(2, gpus=[]))
    assert [r["state"] for r in report.rows] == ["done", "done", "failed"]
    assert len({r["host"] for r in report.rows[:2]}) == 1  # same host, and two processes did the work
    pids = {ev.get("pid") for ev in _events(tmp_path / "out") if ev["state"] == "done"}
    assert len(pids) == 2
    assert probe(tmp_path / "out" / "talk.de.mp4").n_frames == 5


def test_ray_flag_without_ray_says_how_to_install(monkeypatch, tmp_path, clips, capsys):
    import sys

    from lipsync_cli.cli import run

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails
    man = _write_csv(tmp_path / "j.csv", [f"{clips}/talk.mp4,{clips}/fr.wav,{BOX}"])
    code = run(["batch", str(man), "-o", str(tmp_path / "out"), "--ray", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "not installed" in err[0] and "lipsync-cli[ray]" in err[0]


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free now (held together while they are picked)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _processes_with(marker: str, *, in_env: bool = False) -> list[int]:
    """The ids of this user's processes whose command line (or, with ``in_env``, environment) contains
    ``marker`` (Linux: read from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            text = (proc / ("environ" if in_env else "cmdline")).read_bytes()
        except OSError:  # ended meanwhile, or another user's
            continue
        if marker.encode() in text:
            found.append(int(proc.name))
    return found


def _ray_env(**extra: str) -> dict[str, str]:
    """This environment without the Ray settings of whoever runs the tests (address, auth), plus ``extra``."""
    drop = {"RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "LIPSYNC_OFFLINE": "1", **extra}


def test_cli_batch_ray_auto_with_no_instance_running_says_how_to_start_one(clips, tmp_path, fake_ckpt):
    import subprocess
    import sys

    pytest.importorskip("ray")
    if _processes_with("gcs_server"):
        pytest.skip("a Ray instance runs on this machine: --ray auto would join it")
    man = _write_csv(tmp_path / "j.csv", [f"{clips}/talk.mp4,{clips}/de.wav,{BOX}"])
    res = subprocess.run([sys.executable, "-m", "lipsync_cli", "batch", str(man), "-o", str(tmp_path / "out"),
                          "--ray", "auto", "-c", str(fake_ckpt("wav2lip")), "--offline", "-q"],
                         capture_output=True, text=True, env=_ray_env(RAY_TMPDIR=str(tmp_path)), timeout=120)
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "cannot connect to the Ray cluster at auto: Could not find any running Ray instance" in res.stderr
    assert "ray start --head" in res.stderr and "--ray local" in res.stderr


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head started as a user starts one (`ray start --head`, with this venv's `ray`): 2 CPUs, no dashboard,
    ports of its own, its own short temp folder (Unix socket paths are limited to 107 bytes, and /tmp/ray may hold
    other users' sessions), and a token file, so that clients find a token and Ray turns token auth on (and wants
    to say so: the notice `lipsync batch` must not show). Yields (address, the environment clients need).
    Stopped afterwards: SIGTERM to `ray start --block` (which ends what it started), then every process still
    running from its temp folder."""
    import contextlib
    import secrets
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    pytest.importorskip("ray")
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    (temp / "token").write_text(secrets.token_hex(32))
    # RAY_TMPDIR: where `ray start` leaves the address (TEMP/ray/ray_current_cluster) and `--ray auto` finds it
    env = _ray_env(RAY_AUTH_TOKEN_PATH=str(temp / "token"), RAY_TMPDIR=str(temp))
    port, client, agent, agent_grpc, metrics, runtime_env, node_manager, object_manager = _free_ports(8)
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
           "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={runtime_env}", f"--node-manager-port={node_manager}",
           f"--object-manager-port={object_manager}"]
    with open(temp / "head.log", "wb") as log:
        head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (temp / "ray" / "ray_current_cluster").exists():  # written once the head's processes are up
            assert head.poll() is None and time.monotonic() < deadline, (temp / "head.log").read_text()[-3000:]
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", env
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        for pid in _processes_with(str(temp)):  # anything `ray start` left behind: its session is in temp
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_cli_batch_on_a_ray_head_gives_the_same_outputs_and_report(first_run, ray_head, fake_ckpt, tmp_path):
    """`lipsync batch --ray auto` as a user runs it, on the machine where `ray start --head` ran: it finds the
    head (the address file `ray start` wrote) and Ray turns token auth on (a token is there). The same jobs,
    outputs and exit code as in one process, and no Ray warning on the console: Ray's notice that it turned token
    auth on is dropped. (Only when other Ray instances run on this machine too does Ray say which one it joins.)"""
    import subprocess
    import sys

    from checks import foreign_warnings

    from lipsync_cli.media.probe import probe

    _, env = ray_head
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "lipsync_cli", "batch", str(first_run["man"]), "-o", str(out),
                          "--ray", "auto", "-c", str(fake_ckpt("wav2lip")), "--device", "cpu", "--batch-size", "8",
                          "--set", "detector=insightface", "--set", f"detector_weights={SCRFD_ONNX}",
                          "--set", "det_size=160", "--offline"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 1, res.stderr  # one job fails, as in one process
    others = "Found multiple active Ray instances"  # someone else's Ray on this machine: Ray names the one it joins
    assert [w for w in foreign_warnings(res.stderr) if others not in w] == [], res.stderr
    rows = json.loads((out / "report.json").read_text())["jobs"]
    first = first_run["report"]
    key = lambda rows: [(r["job"], r["state"], r["frames"], r["track"] == "box") for r in rows]  # noqa: E731
    assert key(rows) == key(first.rows), [r["error"] for r in rows]
    # the two languages of the real clip may run at once on the two actors: one detects, the other waits for its
    # track (the cache's lock) and reads it
    assert sorted(r["track"] for r in rows if r["job"].startswith("portrait")) == ["cached", "detected"]
    assert len(_cache_files(out)) == 1  # the track; the lock is gone
    broken = next(r for r in rows if r["state"] == "failed")
    assert broken["job"] == "broken.fr.mp4" and "broken.mp4" in broken["error"]  # failed on its actor, alone
    pids = {r["pid"] for r in _events(out) if r["state"] == "done"}
    assert len(pids) == 2  # the head's two actors, processes of the head's own
    for r in rows:
        if r["state"] == "done":
            assert probe(r["output"]).n_frames == probe(first_run["out"] / r["job"]).n_frames


@pytest.mark.slow
def test_cli_batch_ray_local_runs_on_a_private_instance_and_stops_it_on_ctrl_c(clips, fake_ckpt, tmp_path):
    """`--ray local`: a Ray instance for this run alone (even with RAY_ADDRESS pointing elsewhere), with its own
    token (nothing written to ~/.ray, no token notice). The first job is done on its actor; Ctrl-C in the middle
    of the second interrupts that job (no output, no temporary file; pending), and no Ray process of the run is
    left afterwards."""
    import signal
    import subprocess
    import sys
    import uuid

    from checks import foreign_warnings

    from lipsync_cli.media.probe import probe

    man = _write_csv(tmp_path / "j.csv", [f"{clips}/talk.mp4,{clips}/fr.wav,{BOX}"] * 2)  # 10 frames, batches of 1
    out, home, marker = tmp_path / "out", tmp_path / "home", f"lipsync-test-{uuid.uuid4().hex}"
    home.mkdir()
    env = _ray_env(HOME=str(home), RAY_ADDRESS="127.0.0.1:1", LIPSYNC_TEST_MARK=marker)  # no cluster there
    proc = subprocess.Popen([sys.executable, "-m", "lipsync_cli", "batch", str(man), "-o", str(out), "--ray",
                             "local", "--ray-cpus-per-job", "2", "-c", str(fake_ckpt("wav2lip")), "--device", "cpu",
                             "--batch-size", "1", "--silence", "model", "--offline"],  # 10 generator batches
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own group: the Ctrl-C reaches it (and its Ray) alone
    try:
        stopped = _signal_inside_a_job(proc, out, 1, signal.SIGINT, group=True)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert foreign_warnings(err) == [], err
    assert stopped == "talk.fr-2.mp4" and _last_states(out) == {"talk.fr.mp4": "done", "talk.fr-2.mp4": "pending"}
    assert sorted(p.name for p in out.glob("*.mp4")) == ["talk.fr.mp4"] and _leftovers(out) == []
    assert probe(out / "talk.fr.mp4").n_frames == 10
    assert [e["pid"] for e in _events(out) if e["state"] == "done"] != [proc.pid]  # done on the Ray actor
    assert not (home / ".ray").exists()  # Ray's default token file was not created
    assert _processes_with(marker, in_env=True) == []  # the instance was shut down with the run


def _last_states(outdir: Path) -> dict[str, str]:
    last: dict[str, str] = {}
    for ev in _events(outdir):
        last[ev["job"]] = ev["state"]
    return last


def _signal_inside_a_job(proc, out: Path, after_done: int, sig: int, group: bool) -> str:
    """Wait until ``after_done`` jobs are done and the next one is writing its temporary output (so it is in the
    middle of its frames), send ``sig`` (to the process group: a terminal's Ctrl-C), return that job's id."""
    import os
    import time

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        last = _last_states(out) if out.exists() else {}
        running = [j for j, st in last.items() if st == "running"]
        if sum(st == "done" for st in last.values()) >= after_done and running:
            if any(p.name.startswith(f".{running[0]}.lipsync-") for p in out.iterdir()):
                (os.killpg if group else os.kill)(proc.pid, sig)
                return running[0]
        time.sleep(0.01)
    raise AssertionError(f"no job was running in time: {proc.poll()=}, {_last_states(out)}")


@pytest.mark.slow
def test_sigterm_then_ctrl_c_in_the_middle_of_a_job_then_a_rerun_finishes_the_rest(clips, tmp_path, fake_ckpt):
    """The real CLI, stopped inside a job twice: by SIGTERM (what schedulers send: exit 143), then by Ctrl-C
    (SIGINT to the whole process group, ffmpeg children too: exit 130). Each time the finished jobs stay done,
    the running one leaves no file (no temporary either) and is pending; the same command again does the rest."""
    import os
    import signal
    import subprocess
    import sys

    man = _write_csv(tmp_path / "j.csv", [f"{clips}/talk.mp4,{clips}/fr.wav,{BOX}"] * 3)  # 10 frames, batches of 1
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lipsync_cli", "batch", str(man), "-o", str(out), "-c", str(fake_ckpt("wav2lip")),
           "--device", "cpu", "--batch-size", "1", "--offline", "-q"]
    env = {**os.environ, "LIPSYNC_OFFLINE": "1"}
    jobs = ["talk.fr.mp4", "talk.fr-2.mp4", "talk.fr-3.mp4"]
    for done_before, sig, group, code in ((1, signal.SIGTERM, False, 143), (2, signal.SIGINT, True, 130)):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)  # its own group: the Ctrl-C reaches it alone
        try:
            stopped = _signal_inside_a_job(proc, out, done_before, sig, group)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == code, err
        assert stopped == jobs[done_before]
        last = _last_states(out)
        assert last == {j: "done" if k < done_before else "pending" for k, j in enumerate(jobs)}, last
        assert sorted(p.name for p in out.glob("*.mp4")) == sorted(jobs[:done_before])  # nothing partial
        assert _leftovers(out) == []  # no temporary file in OUTDIR
        assert _events(out)[-1] == {**_events(out)[-1], "job": stopped, "state": "pending", "note": "interrupted"}
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["ran"] == 1 and report["summary"]["done"] == 3
    assert [r["frames"] for r in report["jobs"]] == [10, 10, 10] and _leftovers(out) == []
