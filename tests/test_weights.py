"""Weights registry, locations, and downloads against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lipsync_cli import weights
from lipsync_cli.errors import DownloadError, InputNotFound, WeightsNotFound

REPO = Path(__file__).resolve().parents[1]
BODY = bytes(range(256)) * 600  # 153.6 kB of "weights"
BODY_SHA = hashlib.sha256(BODY).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Routes: /good/<f> (honours Range), /norange/<f> (ignores it), /trunc/<f> (first answer cut in half),
    /bad/<f> (same size, wrong bytes), /short/<f> (a smaller file), /zeros/<f> (the registry size of the s3fd
    entry, all zeros, streamed), anything else 404."""

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        kind = self.path.strip("/").split("/")[0]
        srv.requests.append((self.path, self.headers.get("Range")))
        if kind == "zeros":
            return self._send_zeros(weights.REGISTRY["s3fd"].size)
        body = {"good": BODY, "norange": BODY, "trunc": BODY, "bad": bytes(len(BODY)),
                "short": BODY[:1000]}.get(kind)
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
    }
    assert set(weights.REGISTRY) == set(expected)
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
    from lipsync_cli.checkpoint import KIND_NAMES

    assert all(s.arch in KIND_NAMES for s in weights.REGISTRY.values() if s.arch != "insightface")


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
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        weights.download("fake", tmp_path)
    assert _files(tmp_path) == []
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
