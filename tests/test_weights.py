"""Weights registry, locations, and downloads against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from lipsync_cli import weights
from lipsync_cli.errors import CheckpointError, DownloadError, InputNotFound, WeightsNotFound, WriteError

REPO = Path(__file__).resolve().parents[1]
BODY = bytes(range(256)) * 600  # 153.6 kB of "weights"
BODY_SHA = hashlib.sha256(BODY).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Routes: /good/<f> (honours Range), /norange/<f> (ignores it), /trunc/<f> (first answer cut in half),
    /bad/<f> (same size, wrong bytes), /short/<f> (a smaller file), /zeros/<f> (the registry size of the s3fd
    entry, all zeros, streamed), /slow/<f> (the first half, then the rest once ``server.release`` is set),
    anything else 404."""

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        kind = self.path.strip("/").split("/")[0]
        srv.requests.append((self.path, self.headers.get("Range")))
        if kind == "zeros":
            return self._send_zeros(weights.REGISTRY["s3fd"].size)
        body = {"good": BODY, "norange": BODY, "trunc": BODY, "bad": bytes(len(BODY)),
                "short": BODY[:1000], "slow": BODY}.get(kind)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and kind != "norange":
            start = int(rng.split("=", 1)[1].split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if kind == "trunc" and srv.truncations > 0:
            srv.truncations -= 1
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if kind == "slow":
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            srv.release.wait(timeout=60)
            self.wfile.write(payload[len(payload) // 2:])
            return
        self.wfile.write(payload)

    def _send_zeros(self, n: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        block = bytes(1 << 20)
        left = n
        while left > 0:
            self.wfile.write(block[: min(left, len(block))])
            left -= len(block)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.requests = []
    srv.truncations = 1
    srv.release = threading.Event()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real cache, no mirror or offline setting leaking in from the environment; CWD in tmp."""
    home = tmp_path / "home"
    monkeypatch.setenv("LIPSYNC_HOME", str(home))
    monkeypatch.delenv("LIPSYNC_WEIGHTS_MIRROR", raising=False)
    monkeypatch.delenv("LIPSYNC_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "insightface"))
    monkeypatch.chdir(tmp_path)
    return home


def _add_fake(monkeypatch, urls, size=len(BODY), sha=BODY_SHA, name="fake") -> weights.WeightSpec:
    spec = weights.WeightSpec(name, "generator", "wav2lip", f"{name}.pth", size, sha, "test only",
                              tuple(urls))
    monkeypatch.setitem(weights.REGISTRY, name, spec)
    return spec


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# --- registry and locations --------------------------------------------------------------------------------

def test_registry_facts():
    expected = {
        "wav2lip": ("wav2lip.pth", 435807851,
                    "b78b681b68ad9fe6c6fb1debc6ff43ad05834a8af8a62ffc4167b7b34ef63c37"),
        "wav2lip_gan": ("wav2lip_gan.pth", 435801865,
                        "ca9ab7b7b812c0e80a6e70a5977c545a1e8a365a6c49d5e533023c034d7ac3d8"),
        "lipsync_expert": ("lipsync_expert.pth", 197357631,
                           "9b9936c721696446eeed353032cab242a8cf0eed8c46cde540366f6ae5493be5"),
        "visual_quality_disc": ("visual_quality_disc.pth", 169382040,
                                "b3f8f6f7e954af02f2ffe0f3ea11f3259af89bff6e70933001c7c6bc8c145d96"),
        "s3fd": ("s3fd-619a316812.pth", 89843225,
                 "619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543"),
        "syncnet_v2": ("syncnet_v2.model", 54573114,
                       "961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442"),
        "buffalo_l": ("det_10g.onnx", 16923827,
                      "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91"),
        "gfpgan_v14": ("GFPGANv1.4.pth", 348632874,
                       "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad"),
        # torchvision's released files (AlexNet_Weights / VGG16_Weights.IMAGENET1K_V1)
        "lpips-alex": ("alexnet-owt-7be5be79.pth", 244408911,
                       "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02"),
        "lpips-vgg": ("vgg16-397923af.pth", 553433881,
                      "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"),
    }
    assert set(weights.REGISTRY) - set(weights.GROUPS["musetalk"]) == set(expected)  # musetalk: test_musetalk.py
    for name, (file, size, sha) in expected.items():
        spec = weights.REGISTRY[name]
        assert (spec.file, spec.size, spec.sha256) == (file, size, sha)
        assert spec.urls and all(u.startswith(("http://", "https://")) for u in spec.urls)
    for name in ("wav2lip", "wav2lip_gan", "lipsync_expert", "visual_quality_disc"):
        spec = weights.REGISTRY[name]
        assert spec.non_commercial
        assert spec.urls[0] == f"https://huggingface.co/Nekochu/Wav2Lip/resolve/main/{spec.file}"
        assert "numz/wav2lip_studio" in spec.urls[1]
    assert weights.REGISTRY["s3fd"].urls[0] == "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"
    assert weights.REGISTRY["syncnet_v2"].urls[0].endswith("/lipsync/data/syncnet_v2.model")
    for name in ("lpips-alex", "lpips-vgg"):
        spec = weights.REGISTRY[name]
        assert spec.urls == (f"https://download.pytorch.org/models/{spec.file}",)
        assert spec.sha256.startswith(spec.file.rsplit("-", 1)[1].removesuffix(".pth"))  # torchvision's prefix
    from lipsync_cli.checkpoint import KIND_NAMES

    assert all(s.arch in KIND_NAMES for s in weights.REGISTRY.values()
               if s.arch not in ("insightface", "torchvision") and s.kind != "musetalk")


def test_weights_dirs_order_and_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIPSYNC_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    dirs = weights.weights_dirs()
    assert dirs[0] == REPO / "weights"  # running from the checkout
    assert dirs[1] == tmp_path / "weights"
    assert dirs[-1] == tmp_path / "xdg" / "lipsync"
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "lh"))
    assert weights.weights_dirs()[-1] == tmp_path / "lh"
    assert weights.user_cache_dir() == tmp_path / "lh"


def test_find_first_match_wins_and_mirror_env(isolated, tmp_path, monkeypatch):
    _add_fake(monkeypatch, ["https://example.invalid/a/fake.pth"])
    assert weights.find("fake") is None
    isolated.mkdir(parents=True)
    (isolated / "fake.pth").write_bytes(b"x")
    assert weights.find("fake") == isolated / "fake.pth"
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "fake.pth").write_bytes(b"y")
    assert weights.find("fake") == tmp_path / "weights" / "fake.pth"
    assert weights.urls_for(weights.REGISTRY["fake"]) == ["https://example.invalid/a/fake.pth"]
    monkeypatch.setenv("LIPSYNC_WEIGHTS_MIRROR", "http://mirror.local/w/")
    assert weights.urls_for(weights.REGISTRY["s3fd"]) == ["http://mirror.local/w/s3fd-619a316812.pth"]
    assert weights.urls_for(weights.REGISTRY["buffalo_l"]) == ["http://mirror.local/w/buffalo_l.zip"]
    with pytest.raises(WeightsNotFound, match="unknown weights"):
        weights.find("nope")


# --- downloads ---------------------------------------------------------------------------------------------

def test_download_places_verified_file(server, isolated, tmp_path, monkeypatch):
    _add_fake(monkeypatch, [f"{server.url}/good/fake.pth"])
    seen = []
    path = weights.download("fake", tmp_path / "dest", progress=lambda d, t: seen.append((d, t)))
    assert path == tmp_path / "dest" / "fake.pth"
    assert path.read_bytes() == BODY
    assert _files(tmp_path / "dest") == ["fake.pth"]
    assert seen[-1] == (len(BODY), len(BODY)) and seen[0][0] == 0
    # present and correct: nothing fetched again
    n = len(server.requests)
    assert weights.download("fake", tmp_path / "dest") == path
    assert len(server.requests) == n


def test_mirror_fallback_after_404(server, isolated, tmp_path, monkeypatch):
    _add_fake(monkeypatch, [f"{server.url}/missing/fake.pth", f"{server.url}/good/fake.pth"])
    path = weights.download("fake", tmp_path)
    assert path.read_bytes() == BODY
    assert [r[0] for r in server.requests] == ["/missing/fake.pth", "/good/fake.pth"]


def test_resume_after_truncated_body(server, isolated, tmp_path, monkeypatch):
    _add_fake(monkeypatch, [f"{server.url}/trunc/fake.pth"])
    path = weights.download("fake", tmp_path)
    assert path.read_bytes() == BODY
    half = len(BODY) // 2
    assert server.requests == [("/trunc/fake.pth", None), ("/trunc/fake.pth", f"bytes={half}-")]
    assert _files(tmp_path) == ["fake.pth"]


def test_resume_from_existing_part_file(server, isolated, tmp_path, monkeypatch):
    _add_fake(monkeypatch, [f"{server.url}/good/fake.pth"])
    (tmp_path / "fake.pth.part").write_bytes(BODY[:1000])
    assert weights.download("fake", tmp_path).read_bytes() == BODY
    assert server.requests == [("/good/fake.pth", "bytes=1000-")]
    assert _files(tmp_path) == ["fake.pth"]


def test_server_ignoring_range_restarts_cleanly(server, isolated, tmp_path, monkeypatch):
    _add_fake(monkeypatch, [f"{server.url}/norange/fake.pth"])
    (tmp_path / "fake.pth.part").write_bytes(BODY[:1000])
    assert weights.download("fake", tmp_path).read_bytes() == BODY
    assert server.requests == [("/norange/fake.pth", "bytes=1000-")]


def test_wrong_hash_leaves_nothing_then_next_mirror(server, isolated, tmp_path, monkeypatch):
    _add_fake(monkeypatch, [f"{server.url}/bad/fake.pth"])
    with pytest.raises(DownloadError, match="sha256 mismatch") as info:
        weights.download("fake", tmp_path)
    assert _files(tmp_path) == []
    assert ".part" not in str(info.value) and "kept" not in str(info.value)  # nothing is kept: say nothing
    # a corrupt part from an earlier run is not trusted either: its hash fails, it is dropped
    _add_fake(monkeypatch, [f"{server.url}/good/fake.pth"])
    (tmp_path / "fake.pth.part").write_bytes(bytes(1000))
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        weights.download("fake", tmp_path)
    assert _files(tmp_path) == []
    # a mirror with the wrong bytes before a good one: the good one wins
    _add_fake(monkeypatch, [f"{server.url}/bad/fake.pth", f"{server.url}/good/fake.pth"])
    assert weights.download("fake", tmp_path).read_bytes() == BODY
    assert _files(tmp_path) == ["fake.pth"]


def test_partial_file_kept_only_when_it_is_a_good_prefix(server, isolated, tmp_path, monkeypatch):
    """A download cut short on every attempt keeps its good prefix and says so; a wrong file keeps nothing and
    the message does not claim otherwise."""
    server.truncations = 99  # every answer is cut in half
    _add_fake(monkeypatch, [f"{server.url}/trunc/fake.pth"])
    with pytest.raises(DownloadError) as info:
        weights.download("fake", tmp_path / "d")
    part = tmp_path / "d" / "fake.pth.part"
    assert _files(tmp_path / "d") == ["fake.pth.part"] and 0 < part.stat().st_size < len(BODY)
    assert part.read_bytes() == BODY[: part.stat().st_size]
    assert f"the partial file {part} is kept" in str(info.value)
    _add_fake(monkeypatch, [f"{server.url}/bad/fake.pth"])
    with pytest.raises(DownloadError, match="sha256 mismatch") as info:
        weights.download("fake", tmp_path / "e")
    assert _files(tmp_path / "e") == []
    assert "partial" not in str(info.value) and ".part" not in str(info.value)


def test_unwritable_folder_is_a_write_error(server, isolated, tmp_path, monkeypatch):
    _add_fake(monkeypatch, [f"{server.url}/good/fake.pth"])
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(WriteError, match="could not write .*afile"):  # a folder inside a plain file
        weights.download("fake", tmp_path / "afile" / "sub")
    assert server.requests == []


_DOWNLOADER = """
import sys
from lipsync_cli import weights
url, dest, size, sha = sys.argv[1:]
weights.REGISTRY["fake"] = weights.WeightSpec("fake", "generator", "wav2lip", "fake.pth", int(size), sha,
                                              "test only", (url,))
path = weights.download("fake", dest, notify=lambda msg: print("NOTE", msg, flush=True))
print("DONE", path, flush=True)
"""


def test_two_processes_downloading_one_file(server, isolated, tmp_path):
    """The second process waits on the lock while the first streams (slowly), then finds the finished file:
    one request, both succeed, one intact file, no .part or .lock left."""
    dest = tmp_path / "dest"
    env = {**_cli_env(isolated), "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", _DOWNLOADER, f"{server.url}/slow/fake.pth", str(dest), str(len(BODY)), BODY_SHA]
    outs = [tmp_path / "a.out", tmp_path / "b.out"]

    def start(out: Path) -> subprocess.Popen:
        with open(out, "w") as f:
            return subprocess.Popen(args, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path)

    def wait_for(cond, timeout=60.0) -> None:
        end = time.monotonic() + timeout
        while not cond() and time.monotonic() < end:
            time.sleep(0.05)

    procs = [start(outs[0])]
    try:
        wait_for(lambda: len(server.requests) == 1)  # A is half-way through and held there
        assert len(server.requests) == 1, outs[0].read_text()
        procs.append(start(outs[1]))
        # B either waits on the lock (it says so) or, without one, sends its own request
        wait_for(lambda: "NOTE" in outs[1].read_text() or len(server.requests) > 1 or procs[1].poll() is not None)
        server.release.set()
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        server.release.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
    texts = [o.read_text() for o in outs]
    assert codes == [0, 0], texts
    assert all(f"DONE {dest / 'fake.pth'}" in t for t in texts), texts
    assert "another process is downloading fake.pth" in texts[1]
    assert server.requests == [("/slow/fake.pth", None)]
    assert (dest / "fake.pth").read_bytes() == BODY
    assert _files(dest) == ["fake.pth"]


def test_wrong_size_is_refused_before_streaming(server, isolated, tmp_path, monkeypatch):
    # like a 167 kB HTML page or fake standing in for wav2lip.pth
    _add_fake(monkeypatch, [f"{server.url}/short/fake.pth"])
    with pytest.raises(DownloadError, match="expected 153600 B"):
        weights.download("fake", tmp_path)
    assert _files(tmp_path) == []
    assert len(server.requests) == 1


def test_present_but_corrupt_file_is_replaced(server, isolated, tmp_path, monkeypatch):
    _add_fake(monkeypatch, [f"{server.url}/good/fake.pth"])
    (tmp_path / "fake.pth").write_bytes(b"garbage")
    assert weights.download("fake", tmp_path).read_bytes() == BODY


def test_archive_member_download(server, isolated, tmp_path, monkeypatch):
    import zipfile

    zpath = tmp_path / "pack.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("pack/det.onnx", BODY)
        zf.writestr("pack/other.onnx", b"other")
    zbytes = zpath.read_bytes()
    zpath.unlink()

    class ZipHandler(_Handler):
        def do_GET(self):  # noqa: N802
            self.server.requests.append((self.path, None))
            self.send_response(200)
            self.send_header("Content-Length", str(len(zbytes)))
            self.end_headers()
            self.wfile.write(zbytes)

    server.RequestHandlerClass = ZipHandler
    spec = weights.WeightSpec("pack", "detector", "insightface", "det.onnx", len(BODY), BODY_SHA, "test",
                              (f"{server.url}/rel/pack.zip",), archive_member="det.onnx")
    monkeypatch.setitem(weights.REGISTRY, "pack", spec)
    path = weights.download("pack", tmp_path / "d")
    assert path.read_bytes() == BODY
    assert _files(tmp_path / "d") == ["det.onnx"]


# --- resolve: explicit, found, download, offline -----------------------------------------------------------

def test_resolve_explicit_found_and_download(server, isolated, tmp_path, monkeypatch):
    _add_fake(monkeypatch, [f"{server.url}/good/fake.pth"])
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"m")
    assert weights.resolve("fake", explicit) == explicit
    with pytest.raises(InputNotFound):
        weights.resolve("fake", tmp_path / "missing.pth")
    notes = []
    path = weights.resolve("fake", notify=notes.append)
    assert path == isolated / "fake.pth" and path.read_bytes() == BODY
    assert len(notes) == 1 and "153.6 kB" in notes[0] and "test only" in notes[0]
    assert str(isolated) in notes[0]
    n = len(server.requests)
    assert weights.resolve("fake") == path  # found now: no request
    assert len(server.requests) == n


@pytest.mark.parametrize("how", ["arg", "env"])
def test_resolve_offline_message(isolated, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("LIPSYNC_OFFLINE", "1")
    with pytest.raises(WeightsNotFound) as info:
        weights.resolve("wav2lip_gan", offline=(how == "arg"))  # env wins over offline=False
    msg = str(info.value)
    assert "lipsync weights download wav2lip_gan" in msg
    assert "https://huggingface.co/Nekochu/Wav2Lip/resolve/main/wav2lip_gan.pth" in msg
    assert str(isolated) in msg and "offline" in msg and "non-commercial" in msg
    assert not isolated.exists()


def test_resolve_unreachable_network_is_not_found(isolated, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LIPSYNC_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
    with pytest.raises(WeightsNotFound) as info:
        weights.resolve("s3fd")
    msg = str(info.value)
    assert "cannot be reached" in msg and "lipsync weights download s3fd" in msg
    assert f"http://127.0.0.1:{port}/s3fd-619a316812.pth" in msg
    assert _files(isolated) == []


def test_verify_reports_mismatch(isolated, tmp_path, monkeypatch):
    _add_fake(monkeypatch, ["https://example.invalid/fake.pth"])
    _add_fake(monkeypatch, ["https://example.invalid/fake2.pth"], name="fake2")
    isolated.mkdir(parents=True)
    (isolated / "fake.pth").write_bytes(BODY)
    bad = bytearray(BODY)
    bad[5] ^= 1
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "fake2.pth").write_bytes(bytes(bad))
    results = {r.name: r for r in weights.verify(["fake", "fake2"])}
    assert results["fake"].ok and results["fake"].path == isolated / "fake.pth"
    assert not results["fake2"].ok and "sha256" in results["fake2"].reason


# --- CLI ---------------------------------------------------------------------------------------------------

def _cli_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
    env.update({"LIPSYNC_HOME": str(home), **extra})
    return env


def test_cli_download_wrong_s3fd_is_rejected_for_checksum(server, tmp_path):
    """Acceptance: a mirror serving a same-size, wrong s3fd file: rejected for its checksum, nothing left."""
    home = tmp_path / "home"
    env = _cli_env(home, LIPSYNC_WEIGHTS_MIRROR=f"{server.url}/zeros")
    proc = subprocess.run([sys.executable, "-m", "lipsync_cli", "weights", "download", "s3fd", "-q"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5, proc.stderr
    assert "sha256 mismatch" in proc.stderr and "s3fd" in proc.stderr
    assert proc.stderr.count("error:") == 1
    assert _files(home) == []
    assert server.requests == [("/zeros/s3fd-619a316812.pth", None)]


def test_cli_download_list_verify(server, isolated, monkeypatch):
    from typer.testing import CliRunner

    from lipsync_cli.cli import app

    _add_fake(monkeypatch, [f"{server.url}/missing/fake.pth", f"{server.url}/good/fake.pth"])
    runner = CliRunner()
    res = runner.invoke(app, ["weights", "download", "fake", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (isolated / "fake.pth").read_bytes() == BODY
    assert "licence: test only" in res.output and "153.6 kB" in res.output
    res = runner.invoke(app, ["weights", "list"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    line = next(ln for ln in res.output.splitlines() if " fake " in ln)
    assert "yes" in line and "153.6 kB" in line
    assert "wav2lip_gan" in res.output and "missing" in res.output
    res = runner.invoke(app, ["weights", "verify", "fake"])
    assert res.exit_code == 0 and "ok" in res.output
    (isolated / "fake.pth").write_bytes(BODY[:-1] + b"!")
    res = runner.invoke(app, ["weights", "verify", "fake"])
    assert res.exit_code == 1 and "MISMATCH" in res.output


def test_cli_offline_download_refused(isolated, monkeypatch):
    env = _cli_env(isolated, LIPSYNC_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "lipsync_cli", "weights", "download", "s3fd"],
                          cwd=isolated.parent, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5 and "LIPSYNC_OFFLINE" in proc.stderr
    assert not isolated.exists()


# --- one resolver: torchvision's hub cache, insightface's home, the detectors ------------------------------

def test_lpips_trunks_are_found_in_torch_hub_and_weights_folders(isolated, tmp_path, monkeypatch):
    hub = tmp_path / "torch" / "hub" / "checkpoints"  # torch.hub.get_dir() is $TORCH_HOME/hub
    for name, file in (("lpips-alex", "alexnet-owt-7be5be79.pth"), ("lpips-vgg", "vgg16-397923af.pth")):
        spec = weights.get_spec(name)
        assert weights.default_dir(spec) == hub  # downloads go where torchvision itself looks
        assert weights.find(name) is None
        hub.mkdir(parents=True, exist_ok=True)
        (hub / file).write_bytes(b"t")
        assert weights.find(name) == hub / file
        (tmp_path / "weights").mkdir(exist_ok=True)
        (tmp_path / "weights" / file).write_bytes(b"w")
        assert weights.find(name) == tmp_path / "weights" / file  # our folders first
    monkeypatch.setenv("LIPSYNC_WEIGHTS_MIRROR", "http://mirror.local/w")
    assert weights.urls_for(weights.get_spec("lpips-vgg")) == ["http://mirror.local/w/vgg16-397923af.pth"]


def test_cli_download_lpips_trunks_into_torch_hub(server, isolated, tmp_path, monkeypatch):
    """`lipsync weights download lpips-alex lpips-vgg` through the mirror variable lands both files, under
    torchvision's names, in $TORCH_HOME/hub/checkpoints (registry sizes stand in for the real 0.8 GB)."""
    import dataclasses

    from typer.testing import CliRunner

    from lipsync_cli.cli import app

    for name in ("lpips-alex", "lpips-vgg"):
        monkeypatch.setitem(weights.REGISTRY, name,
                            dataclasses.replace(weights.REGISTRY[name], size=len(BODY), sha256=BODY_SHA))
    monkeypatch.setenv("LIPSYNC_WEIGHTS_MIRROR", f"{server.url}/good")
    res = CliRunner().invoke(app, ["weights", "download", "lpips-alex", "lpips-vgg", "--quiet"])
    assert res.exit_code == 0, res.output
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    assert _files(hub) == ["alexnet-owt-7be5be79.pth", "vgg16-397923af.pth"]
    assert all((hub / f).read_bytes() == BODY for f in _files(hub))
    assert [r[0] for r in server.requests] == ["/good/alexnet-owt-7be5be79.pth", "/good/vgg16-397923af.pth"]


def test_insightface_home_and_weights_folders_for_the_scrfd_pack(isolated, tmp_path):
    from lipsync_cli.faces.scrfd import resolve_weights

    spec = weights.get_spec("buffalo_l")
    pack = tmp_path / "insightface" / "models" / "buffalo_l"
    assert weights.default_dir(spec) == pack  # $INSIGHTFACE_HOME, not ~/.insightface
    with pytest.raises(WeightsNotFound) as info:
        resolve_weights(None)
    msg = str(info.value)
    assert "lipsync weights download buffalo_l" in msg and str(pack) in msg
    assert str(tmp_path / "weights" / "buffalo_l") in msg and "\n" not in msg
    ours = tmp_path / "weights" / "buffalo_l" / "det_10g.onnx"  # a folder `lipsync weights list` reports
    ours.parent.mkdir(parents=True)
    ours.write_bytes(b"onnx")
    assert resolve_weights(None) == ours == weights.find("buffalo_l")
    other = tmp_path / "weights" / "antelopev2" / "det_10g.onnx"  # any pack name: same folders
    other.parent.mkdir(parents=True)
    other.write_bytes(b"onnx")
    assert resolve_weights("antelopev2") == other


def test_s3fd_detector_is_looked_up_in_the_weights_folders(isolated, tmp_path):
    from lipsync_cli.faces import load_detector

    with pytest.raises(WeightsNotFound, match="lipsync weights download s3fd"):
        load_detector("s3fd")
    found = tmp_path / "weights" / "s3fd-619a316812.pth"
    found.parent.mkdir()
    found.write_bytes(b"not a checkpoint")  # found, then refused for what it holds
    with pytest.raises(CheckpointError, match=str(found)):
        load_detector("s3fd")


# --- LPIPS trunks built from the resolved file ------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_alexnet(tmp_path_factory) -> tuple[Path, dict]:
    """A file in the exact format of torchvision's alexnet-owt-7be5be79.pth: the state dict of ``alexnet()``
    (every key, shape and dtype), random conv weights; the classifier (unused by LPIPS) zeros to write fast.
    Returns (path, the state dict's ``features.*`` tensors)."""
    import torch
    from torchvision.models import alexnet

    with torch.device("meta"):
        keys = alexnet().state_dict()
    gen = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(v.shape, generator=gen) * 0.05 if k.startswith("features.") else torch.zeros(v.shape))
          for k, v in keys.items()}
    path = tmp_path_factory.mktemp("trunk") / "alexnet-owt-7be5be79.pth"
    torch.save(sd, path)
    return path, {k: v for k, v in sd.items() if k.startswith("features.")}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a URL (ours, or torchvision's own download through torch.hub) is recorded and fails."""
    import urllib.request

    import torch.hub

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args[0] if args else kwargs)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "urlopen", refuse)  # torch.hub imported the name itself
    return calls


def test_lpips_trunk_from_torch_hub_and_weights_folder_without_download(isolated, tmp_path, fake_alexnet,
                                                                       no_network):
    import torch
    from torchvision.models import vgg16

    from lipsync_cli.evaluate.metrics import LPIPSMetric
    from lipsync_cli.train.losses import make_lpips

    alex_file, want = fake_alexnet
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / alex_file.name).symlink_to(alex_file)
    net = make_lpips("alex", True, "cpu")
    trunk = net.net.state_dict()  # lpips' slices keep torchvision's layer indices
    assert torch.equal(trunk["slice1.0.weight"], want["features.0.weight"])
    assert torch.equal(trunk["slice5.10.bias"], want["features.10.bias"])
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    metric = LPIPSMetric("cpu")
    assert torch.equal(metric.net.net.state_dict()["slice3.6.weight"], want["features.6.weight"])
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    assert metric(a, a) == 0.0 and metric(a, b) > 0.0

    # vgg: torchvision's features.* in our ./weights folder (a trunk without the classifier loads too)
    torch.manual_seed(1)
    features = {f"features.{k}": v for k, v in vgg16().features.state_dict().items()}
    (tmp_path / "weights").mkdir()
    torch.save(features, tmp_path / "weights" / "vgg16-397923af.pth")
    net = make_lpips("vgg", True, "cpu")
    assert torch.equal(net.net.state_dict()["slice5.28.weight"], features["features.28.weight"])
    assert no_network == []  # nothing was downloaded, by us or by torchvision
    assert _files(hub) == [alex_file.name]


def test_lpips_offline_without_trunk_names_the_download(isolated, tmp_path, monkeypatch, no_network):
    from lipsync_cli.evaluate.metrics import LPIPSMetric
    from lipsync_cli.train.losses import make_lpips

    monkeypatch.setenv("LIPSYNC_OFFLINE", "1")
    for net in ("alex", "vgg"):
        with pytest.raises(WeightsNotFound) as info:
            make_lpips(net, True, "cpu")
        msg = str(info.value)
        assert f"lipsync weights download lpips-{net}" in msg and "offline" in msg and "\n" not in msg
        assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    monkeypatch.delenv("LIPSYNC_OFFLINE")
    with pytest.raises(WeightsNotFound, match="lipsync weights download lpips-alex"):
        LPIPSMetric("cpu")  # evaluate never downloads, online or not
    assert no_network == []
    assert not (tmp_path / "torch").exists()


def test_lpips_trunk_of_the_wrong_file_is_refused(isolated, tmp_path, no_network):
    import torch

    from lipsync_cli.errors import CheckpointMismatch
    from lipsync_cli.train.losses import make_lpips

    (tmp_path / "weights").mkdir()
    path = tmp_path / "weights" / "alexnet-owt-7be5be79.pth"
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointMismatch, match="not torchvision's alex weights"):
        make_lpips("alex", True, "cpu")
    # every key of alexnet's trunk, none of its shapes (e.g. another network's file under this name)
    torch.save({f"features.{i}.{p}": torch.zeros(2) for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")}, path)
    with pytest.raises(CheckpointMismatch, match="does not fit the LPIPS alex trunk"):
        make_lpips("alex", True, "cpu")


# --- MuseTalk 1.5: seven files in upstream's layout, no published checksums ------------------------------------

def test_musetalk_registry_facts():
    group = weights.GROUPS["musetalk"]
    specs = [weights.REGISTRY[n] for n in group]
    assert [(s.pack, s.file) for s in specs] == [
        ("musetalk/musetalkV15", "unet.pth"), ("musetalk/musetalkV15", "musetalk.json"),
        ("musetalk/sd-vae", "diffusion_pytorch_model.bin"), ("musetalk/sd-vae", "config.json"),
        ("musetalk/whisper", "pytorch_model.bin"), ("musetalk/whisper", "config.json"),
        ("musetalk/whisper", "preprocessor_config.json")]
    hosts = {"musetalk/musetalkV15": "https://huggingface.co/TMElyralab/MuseTalk/resolve/main/musetalkV15/",
             "musetalk/sd-vae": "https://huggingface.co/stabilityai/sd-vae-ft-mse/resolve/main/",
             "musetalk/whisper": "https://huggingface.co/openai/whisper-tiny/resolve/main/"}
    for s in specs:
        assert s.urls == (hosts[s.pack] + s.file,)
        assert s.size is None and s.sha256 is None and "could be verified" in s.unverified  # nothing invented
        assert not s.non_commercial
    assert "MIT" in weights.REGISTRY["musetalk_unet"].licence
    assert weights.REGISTRY["sd_vae_ft_mse"].licence.startswith("MIT")
    assert weights.REGISTRY["whisper_tiny"].licence.startswith("Apache-2.0")


def test_cli_download_musetalk_group(server, isolated, monkeypatch):
    """`lipsync weights download musetalk` fetches all seven files into <cache>/musetalk/ in upstream's layout
    (one mirror folder per model: two of them are named config.json), says they are unverified, and `verify`
    accepts them as such."""
    from typer.testing import CliRunner

    from lipsync_cli.cli import app

    monkeypatch.setenv("LIPSYNC_WEIGHTS_MIRROR", f"{server.url}/good")
    runner = CliRunner()
    res = runner.invoke(app, ["weights", "download", "musetalk", "--quiet"])
    assert res.exit_code == 0, res.output
    got = sorted(str(p.relative_to(isolated)) for p in isolated.rglob("*") if p.is_file())
    assert got == ["musetalk/musetalkV15/musetalk.json", "musetalk/musetalkV15/unet.pth",
                   "musetalk/sd-vae/config.json", "musetalk/sd-vae/diffusion_pytorch_model.bin",
                   "musetalk/whisper/config.json", "musetalk/whisper/preprocessor_config.json",
                   "musetalk/whisper/pytorch_model.bin"]
    assert all((isolated / p).read_bytes() == BODY for p in got)
    assert sorted(p for p, _ in server.requests) == sorted(f"/good/{p}" for p in got)
    assert res.output.count("unverified") == 7 and "no checksum to verify" in res.output
    assert weights.find("sd_vae_ft_mse_config") == isolated / "musetalk/sd-vae/config.json"
    res = runner.invoke(app, ["weights", "verify", "musetalk"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and res.output.count("unverified") == 7, res.output
    res = runner.invoke(app, ["weights", "download", "musetalk", "--dir", str(isolated.parent / "w"), "-q"])
    assert res.exit_code == 0 and (isolated.parent / "w/musetalk/whisper/config.json").is_file()


def test_musetalk_offline_names_the_download(isolated, monkeypatch):
    monkeypatch.setenv("LIPSYNC_OFFLINE", "1")
    with pytest.raises(WeightsNotFound) as err:
        weights.resolve("musetalk_unet")
    msg = str(err.value)
    assert "\n" not in msg and "`lipsync weights download musetalk`" in msg and "unet.pth" in msg
    assert str(isolated / "musetalk" / "musetalkV15") in msg
