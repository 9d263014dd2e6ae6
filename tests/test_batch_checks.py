"""`lipsync batch` checks everything before the first job (files, weights, columns, --set), `--dry-run`,
`--list-columns`, dub's options as batch flags (one table for dub, batch, detect and prepare), and `detect
--speakers FILE`. Tiny synthetic clips (160x120, 0.2-0.4 s) with a fixed box and the fake Wav2Lip."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from synth import make_audio, make_video

BOX = "40 20 120 100"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("checkmedia")
    make_video(d / "talk.mp4", seconds=0.4, fps=25)
    make_audio(d / "fr.wav", seconds=0.2)  # 5 frames
    make_audio(d / "de.wav", seconds=0.2)
    return d


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _run(*args: str) -> int:
    from lipsync_cli.cli import run

    return run(["batch", *map(str, args)])


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# checked before any work


def test_a_missing_input_in_row_3_stops_the_batch_before_any_job(media, tmp_path, fake_ckpt, capsys):
    man = _csv(tmp_path / "jobs.csv", "video,audio,box,output",
               [f"{media}/talk.mp4,{media}/fr.wav,{BOX},a.mp4", f"{media}/talk.mp4,{media}/de.wav,{BOX},b.mp4",
                f"{media}/talk.mp4,{media}/nope.wav,{BOX},c.mp4", f"{media}/talk.mp4,{media},{BOX},d.mp4"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "journal.jsonl").write_text('{"job":"old.mp4","state":"done","time":1}\n')
    before = _tree(out)
    code = _run(man, "-o", out, "-c", fake_ckpt("wav2lip"), "--device", "cpu", "--offline", "-q")
    err = capsys.readouterr().err
    assert code == 2
    assert "line 4: audio" in err and "nope.wav does not exist" in err  # row 3 is the manifest's line 4
    assert f"line 5: audio: {media} is a directory, not a media file" in err
    assert _tree(out) == before  # no job ran: no output, the journal untouched, no report


def test_weights_that_do_not_resolve_stop_the_batch_before_any_job(media, tmp_path, monkeypatch, capsys):
    for var in ("LIPSYNC_HOME", "XDG_CACHE_HOME", "TORCH_HOME", "INSIGHTFACE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    man = _csv(tmp_path / "jobs.csv", "video,audio,box,checkpoint",
               [f"{media}/talk.mp4,{media}/fr.wav,{BOX},gone.pth", f"{media}/talk.mp4,{media}/de.wav,,"])
    code = _run(man, "-o", tmp_path / "out", "--offline", "-q")
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "out").exists()
    assert f"line 2: checkpoint: {tmp_path / 'gone.pth'} does not exist" in err
    line3 = err.split("line 3: ", 1)[1]
    assert "wav2lip_gan" in line3 and "s3fd" in line3 and "offline" in line3  # the generator, the detector


def test_an_unknown_header_column_is_reported_even_when_its_cells_are_empty(media, tmp_path, capsys):
    man = _csv(tmp_path / "jobs.csv", "video,audio,box,vcodc",
               [f"{media}/talk.mp4,{media}/fr.wav,{BOX},", f"{media}/talk.mp4,{media}/de.wav,{BOX},"])
    for extra in ([], ["--skip-invalid"]):
        assert _run(man, "-o", tmp_path / "out", "-q", *extra) == 2
        err = capsys.readouterr().err
        assert "line 1: unknown column(s) vcodc in the header" in err and "--list-columns" in err
    assert not (tmp_path / "out").exists()


def test_set_with_an_unknown_key_is_one_error_naming_it(media, tmp_path, capsys):
    man = _csv(tmp_path / "jobs.csv", "video,audio,box",
               [f"{media}/talk.mp4,{media}/fr.wav,{BOX}"] * 4)
    assert _run(man, "-o", tmp_path / "out", "--set", "nosuch=1", "-q") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 'nosuch' is not a dub option") and "--list-columns" in err
    assert "malformed" not in err and len(err.splitlines()) == 1
    assert _run(man, "-o", tmp_path / "out", "--set", "crf=high", "-q") == 2
    err = capsys.readouterr().err
    assert "crf='high'" in err and "malformed" not in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# --dry-run, --list-columns, why a rerun redoes a job


def _dry_rows(stdout: str) -> dict[str, tuple[str, str]]:
    """job -> (will, why) from the dry-run table."""
    rows = {}
    for line in stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 6 and parts[0].isdigit():
            rows[parts[1]] = (parts[4], " ".join(parts[5:]))
    return rows


def test_dry_run_says_what_each_job_will_do_and_why_and_a_rerun_says_it_too(media, tmp_path, fake_ckpt, capsys):
    fr2 = tmp_path / "fr2.wav"
    make_audio(fr2, seconds=0.2)
    base = ["-c", fake_ckpt("wav2lip"), "--device", "cpu", "--batch-size", "8", "--offline"]
    header = "video,audio,box,crf,output"
    first = [f"{media}/talk.mp4,{media}/fr.wav,{BOX},,a.mp4", f"{media}/talk.mp4,{fr2},{BOX},,b.mp4",
             f"{media}/talk.mp4,{media}/de.wav,{BOX},20,c.mp4"]
    man = _csv(tmp_path / "jobs.csv", header, first)
    out = tmp_path / "out"
    assert _run(man, "-o", out, *base, "-q") == 0
    capsys.readouterr()
    # the same rows, b's audio replaced, c's crf changed, and a new row d
    make_audio(fr2, seconds=0.3)
    _csv(man, header, [first[0], first[1], first[2].replace(",20,", ",24,"),
                       f"{media}/talk.mp4,{media}/de.wav,{BOX},,d.mp4"])
    before = _tree(out)
    assert _run(man, "-o", out, *base, "--dry-run") == 0
    got = capsys.readouterr().out
    assert _dry_rows(got) == {"a.mp4": ("keep", "done"), "b.mp4": ("run", "audio changed"),
                              "c.mp4": ("run", "options changed"), "d.mp4": ("run", "new")}
    assert "3 job(s) would run" in got and "1 kept" in got
    assert _tree(out) == before  # nothing written: no journal event, no report, no output
    # a malformed row: the table still shows every row, and the exit code is 2
    bad = _csv(tmp_path / "bad.csv", header, [first[0], f"{media}/talk.mp4,{media}/fr.wav,{BOX},99,e.mp4"])
    assert _run(bad, "-o", out, *base, "--dry-run") == 2
    cap = capsys.readouterr()
    assert "a.mp4" in cap.out and "skip" in cap.out and "--crf must be in 0..51" in cap.out
    assert "1 malformed row(s)" in cap.err
    assert _tree(out) == before
    # the real rerun says on the console which jobs it does again, and why
    assert _run(man, "-o", out, *base) == 0
    err = capsys.readouterr().err
    assert "runs again: b.mp4 (audio changed)" in err and "runs again: c.mp4 (options changed)" in err
    assert "runs again: a.mp4" not in err and "runs again: d.mp4" not in err  # kept, and new


def test_list_columns_lists_every_dub_option_with_type_default_and_meaning(capsys):
    from lipsync_cli.dub import DubOptions

    assert _run("--list-columns") == 0
    lines = capsys.readouterr().out.splitlines()
    table = {ln.split()[0]: ln for ln in lines[1:]}
    fields = {f.name for f in dataclasses.fields(DubOptions)} - {"track_options", "encode"}
    fields |= {f.name for f in dataclasses.fields(DubOptions().track_options)}
    fields |= {f.name for f in dataclasses.fields(DubOptions().encode)}
    assert fields <= set(table), fields - set(table)
    assert {"video", "audio", "output", "ref_face", "speaker", "no_smooth"} <= set(table)
    assert table["crf"].split()[1:3] == ["int", "18"] and "Quality" in table["crf"]
    assert table["pads"].split()[1:6] == ["4", "numbers", "0", "10", "0"]
    assert all(len(ln.split()) >= 3 for ln in lines[1:])  # every column has a meaning


# ---------------------------------------------------------------------------------------------------------------
# dub's options as batch flags, from one table


def test_a_batch_flag_is_the_default_of_every_row_and_a_cell_overrides_it(media, tmp_path, fake_ckpt, monkeypatch,
                                                                          capsys):
    from lipsync_cli.media.probe import probe

    ckpt = fake_ckpt("wav2lip")
    monkeypatch.chdir(ckpt.parent)  # a flag's path is relative to the current folder, not to the manifest's
    man = _csv(tmp_path / "jobs.csv", "video,audio,box,vcodec",
               [f"{media}/talk.mp4,{media}/fr.wav,{BOX},", f"{media}/talk.mp4,{media}/de.wav,{BOX},libx264"])
    out = tmp_path / "out"
    assert _run(man, "-o", out, "-c", ckpt.name, "--vcodec", "libx265", "--language", "fra", "--device", "cpu",
                "--offline", "-q") == 0
    fr, de = probe(out / "talk.fr.mp4"), probe(out / "talk.de.mp4")
    assert (fr.codec, de.codec) == ("hevc", "h264")
    assert [st.language for st in fr.streams if st.kind == "Audio"] == ["fra"]
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["done"] == 2
    # the same option as a flag and as --set: one error
    assert _run(man, "-o", out, "--crf", "20", "--set", "crf=22", "-q") == 2
    assert "both give crf" in capsys.readouterr().err


def test_dub_batch_detect_and_prepare_take_the_same_options_from_one_table():
    import click
    import typer.main

    from lipsync_cli.batch.manifest import OPTION_COLUMNS, build_options
    from lipsync_cli.cli import app
    from lipsync_cli.cli.options import COLUMN_ONLY, DUB_FLAGS
    from lipsync_cli.dub import DubOptions
    from lipsync_cli.train.prepare import PrepareOptions

    group = typer.main.get_command(app)
    ctx = click.Context(group)
    params = {name: {p.name: p for p in group.commands[name].params} for name in ("dub", "batch", "detect",
                                                                                  "prepare")}
    for flag in DUB_FLAGS:
        d, b = params["dub"][flag.name], params["batch"][flag.name]
        assert d.opts == b.opts and d.help == b.help, flag.name  # same names, same help
        assert b.default is None  # batch: not given unless given, then every row's default
        if d.default not in (None, False):  # batch's help shows dub's default
            shown = " ".join(map(str, d.default)) if isinstance(d.default, tuple) else str(d.default)
            assert b.show_default == shown, flag.name
    # the table's defaults are DubOptions': dub with no option gives DubOptions()
    defaults = {f.name: f.default for f in DUB_FLAGS if f.default is not None}
    assert build_options(defaults) == DubOptions()
    assert set(OPTION_COLUMNS) == {f.name for f in DUB_FLAGS} | set(COLUMN_ONLY)
    # detect's and prepare's detector options are dub's, with dub's defaults (the same detector on a device)
    for cmd in ("detect", "prepare"):
        for name in ("detector", "detector_weights", "det_size"):
            assert params[cmd][name].opts == params["dub"][name].opts
            assert params[cmd][name].default == params["dub"][name].default, (cmd, name)
    assert params["detect"]["speakers"].opts == params["dub"]["speakers"].opts == ["--speakers"]
    assert params["detect"]["quiet"].help
    assert PrepareOptions().detector == DubOptions().detector and PrepareOptions().det_size == DubOptions().det_size
    del ctx


def test_prepare_detects_at_dubs_size_on_each_device():
    from lipsync_cli.dub import DubOptions, detection_size
    from lipsync_cli.train.prepare import PrepareOptions, _on_device

    for device in ("cpu", "cuda:0"):
        assert _on_device(PrepareOptions(), device).det_size == detection_size(DubOptions(), device)
    assert _on_device(PrepareOptions(det_size=200), "cpu").det_size == 200


# ---------------------------------------------------------------------------------------------------------------
# detect: --speakers FILE as in dub, --speaking scores


def test_detect_speakers_is_the_speakers_file_and_the_old_flag_gets_a_hint(media, tmp_path, capsys):
    from lipsync_cli.cli import run

    args = ["detect", str(media / "talk.mp4"), "-o", str(tmp_path / "t.json")]
    assert run([*args, "--speakers", str(tmp_path / "who.yaml")]) == 2  # read as the file, which is not there
    err = capsys.readouterr().err
    assert "who.yaml" in err and "not found" in err
    assert run([*args, "--speakers"]) == 2  # the old scoring flag, alone
    err = capsys.readouterr().err
    assert "--speaking" in err and "speakers.yaml" in err
    assert run([*args, "--speakers", "--preview", str(tmp_path / "p.mp4")]) == 2  # old flag, then another option
    err = capsys.readouterr().err
    assert "--speakers takes a speakers.yaml" in err and "use `lipsync detect --speaking`" in err
    assert not (tmp_path / "t.json").exists()
