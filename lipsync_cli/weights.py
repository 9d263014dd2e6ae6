"""Known weight files: registry, where they live, download (resume, mirrors, sha256, a lock) and verification.

Every registry file is found by one resolver (:func:`resolve`, :func:`find`); first match wins:
    1. an explicit path (``--checkpoint``, ``--detector-weights``), see :func:`resolve`;
    2. the project's ``weights/`` folder (the checkout's, beside the package, then ``./weights`` of the CWD);
    3. the user cache: ``$LIPSYNC_HOME``, else ``$XDG_CACHE_HOME/lipsync``, else ``~/.cache/lipsync``;
    4. where the file's own library keeps it, which is also where a download of it goes: insightface's
       ``buffalo_l`` pack in ``$INSIGHTFACE_HOME/models/buffalo_l`` (default ``~/.insightface``), torchvision's
       LPIPS trunks in torch's hub cache ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch``).

Downloads stream into ``<file>.part`` beside the target while hashing; an interrupted download resumes with an
HTTP ``Range`` request; the file is renamed into place only when its size and sha256 match the registry. A lock
(``<file>.lock`` beside the target, removed afterwards) serialises processes downloading the same file: the
second one waits, then finds the finished file.
Environment: ``LIPSYNC_OFFLINE=1`` never touches the network; ``LIPSYNC_WEIGHTS_MIRROR=URL`` replaces every
registry URL by ``URL/<file name>``.

Library code: never prints; progress goes through callbacks, problems through domain errors.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lipsync_cli.errors import DownloadError, WeightsNotFound
from lipsync_cli.files import atomic_path, write_error

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent downloads of one file are not serialised there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, "int | None"], None]  # (bytes done, bytes total or None)
NotifyFn = Callable[[str], None]  # a one-line message for the user

CHUNK_BYTES = 1 << 20  # 1 MiB per read while streaming
TIMEOUT_S = 30.0  # socket timeout per connect/read, seconds
RETRIES_PER_URL = 3  # attempts on one URL while each attempt still makes progress
USER_AGENT = "lipsync-cli (weights downloader)"

NON_COMMERCIAL = "non-commercial research use only (Wav2Lip licence; trained on LRS2)"

_HF = "https://huggingface.co/Nekochu/Wav2Lip/resolve/main/"
_HF2 = "https://huggingface.co/numz/wav2lip_studio/resolve/main/Wav2lip/"
TORCHVISION_LICENCE = "torchvision release (BSD-3-Clause code); trained on ImageNet, check its terms"


@dataclass(frozen=True)
class WeightSpec:
    """One known weight file.

    ``kind`` is its role (generator / detector / expert / discriminator / eval / lpips); ``arch`` the
    checkpoint kind it holds (a ``checkpoint.KIND_NAMES`` key, ``"insightface"`` or ``"torchvision"``). ``size``
    is in bytes. ``urls`` lists the original first, then mirrors. When ``archive_member`` is set, the URLs serve
    a zip (``download_name``) and the registry file is that member of it; size and sha256 are the member's.
    ``home`` names the library that also keeps the file, where it is looked for and downloaded to:
    ``"insightface"`` (``$INSIGHTFACE_HOME/models/<pack>``) or ``"torch"`` (``$TORCH_HOME/hub/checkpoints``).
    Without ``home``, a ``pack`` is the sub-folder of a weights folder the file lives in and downloads to
    (``musetalk/sd-vae/config.json``: the files of one model keep the layout their loader expects).
    """

    name: str
    kind: str
    arch: str
    file: str
    size: int | None  # None: no size published (see ``unverified``)
    sha256: str | None  # None: no checksum published; the file is taken as downloaded
    licence: str
    urls: tuple[str, ...]
    description: str = ""
    archive_member: str | None = None
    home: str | None = None
    pack: str | None = None
    unverified: str = ""  # why size/sha256 are absent (no source states them); shown by download and verify

    @property
    def download_name(self) -> str:
        """File name of what the URLs serve (the zip for archives, else ``file``)."""
        if self.archive_member and self.urls:
            return Path(urllib.parse.urlparse(self.urls[0]).path).name
        return self.file

    @property
    def non_commercial(self) -> bool:
        return "non-commercial" in self.licence


REGISTRY: dict[str, WeightSpec] = {
    "wav2lip": WeightSpec(
        "wav2lip", "generator", "wav2lip", "wav2lip.pth", 435807851,
        "b78b681b68ad9fe6c6fb1debc6ff43ad05834a8af8a62ffc4167b7b34ef63c37", NON_COMMERCIAL,
        (_HF + "wav2lip.pth", _HF2 + "wav2lip.pth"),
        "Wav2Lip generator (sharper sync, blurrier mouth)",
    ),
    "wav2lip_gan": WeightSpec(
        "wav2lip_gan", "generator", "wav2lip", "wav2lip_gan.pth", 435801865,
        "ca9ab7b7b812c0e80a6e70a5977c545a1e8a365a6c49d5e533023c034d7ac3d8", NON_COMMERCIAL,
        (_HF + "wav2lip_gan.pth", _HF2 + "wav2lip_gan.pth"),
        "Wav2Lip generator trained with the visual-quality GAN (default for dub)",
    ),
    "lipsync_expert": WeightSpec(
        "lipsync_expert", "expert", "syncnet_color", "lipsync_expert.pth", 197357631,
        "9b9936c721696446eeed353032cab242a8cf0eed8c46cde540366f6ae5493be5", NON_COMMERCIAL,
        (_HF + "lipsync_expert.pth", _HF2 + "lipsync_expert.pth"),
        "SyncNet lip-sync expert used as a training loss",
    ),
    "visual_quality_disc": WeightSpec(
        "visual_quality_disc", "discriminator", "disc_qual", "visual_quality_disc.pth", 169382040,
        "b3f8f6f7e954af02f2ffe0f3ea11f3259af89bff6e70933001c7c6bc8c145d96", NON_COMMERCIAL,
        (_HF + "visual_quality_disc.pth", _HF2 + "visual_quality_disc.pth"),
        "Wav2Lip visual-quality discriminator (GAN training)",
    ),
    "s3fd": WeightSpec(
        "s3fd", "detector", "s3fd", "s3fd-619a316812.pth", 89843225,
        "619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543",
        "research use; check its terms (face-alignment release, BSD-3-Clause code; trained on WIDER FACE)",
        ("https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",),
        "S3FD face detector (default for dub)",
    ),
    "syncnet_v2": WeightSpec(
        "syncnet_v2", "eval", "syncnet_v2", "syncnet_v2.model", 54573114,
        "961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442",
        "non-commercial research use only (syncnet_python release; trained on BBC TV data)",
        ("http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",),
        "SyncNet v2 for the LSE-D / LSE-C metrics",
    ),
    "buffalo_l": WeightSpec(
        "buffalo_l", "detector", "insightface", "det_10g.onnx", 16923827,
        "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
        "non-commercial research use only (insightface model zoo)",
        ("https://github.com/deepinsight/insightface/releases/download/model-zoo/buffalo_l.zip",
         "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"),
        "insightface buffalo_l pack: SCRFD-10G face detector (det_10g.onnx)",
        archive_member="det_10g.onnx", home="insightface", pack="buffalo_l",
    ),
    "gfpgan_v14": WeightSpec(
        "gfpgan_v14", "enhancer", "gfpgan_v14", "GFPGANv1.4.pth", 348632874,
        "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
        "Apache-2.0 (TencentARC/GFPGAN, code and weights)",
        ("https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",),
        "GFPGAN v1.4 face restorer: sharpens the dubbed mouth (`dub --enhance`)",
    ),
    # torchvision's ImageNet trunks of LPIPS (the lpips package ships only its linear layers); the 8 hex digits
    # in each name are the sha256 prefix torchvision checks.
    "lpips-alex": WeightSpec(
        "lpips-alex", "lpips", "torchvision", "alexnet-owt-7be5be79.pth", 244408911,
        "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02", TORCHVISION_LICENCE,
        ("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",),
        "torchvision AlexNet: the LPIPS trunk of `--lpips-net alex` and of the evaluate LPIPS metric",
        home="torch",
    ),
    "lpips-vgg": WeightSpec(
        "lpips-vgg", "lpips", "torchvision", "vgg16-397923af.pth", 553433881,
        "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0", TORCHVISION_LICENCE,
        ("https://download.pytorch.org/models/vgg16-397923af.pth",),
        "torchvision VGG16: the LPIPS trunk of `--lpips-net vgg`",
        home="torch",
    ),
}

# MuseTalk 1.5 (lipsync_cli.models.musetalk): its UNet and the two networks it runs on, in upstream's
# download_weights.sh layout under <weights folder>/musetalk/. No source reachable from here states these files'
# sizes or checksums (Hugging Face shows them on each file's page): they are downloaded unverified.
_MUSETALK_HF = "https://huggingface.co/TMElyralab/MuseTalk/resolve/main/musetalkV15/"
_SD_VAE_HF = "https://huggingface.co/stabilityai/sd-vae-ft-mse/resolve/main/"
_WHISPER_HF = "https://huggingface.co/openai/whisper-tiny/resolve/main/"
MUSETALK_LICENCE = ("code MIT, weights for any use, commercial included (TMElyralab/MuseTalk README: 'the trained "
                    "model are available for any purpose, even commercially'; its Hugging Face model card is tagged "
                    "creativeml-openrail-m)")
SD_VAE_LICENCE = "MIT (stabilityai/sd-vae-ft-mse model card)"
WHISPER_LICENCE = "Apache-2.0 (openai/whisper-tiny model card)"
NO_CHECKSUM = "no published size or sha256 could be verified when this entry was written"
_MUSETALK_PARTS = (
    # name, arch, pack, file, url, licence, description
    ("musetalk_unet", "musetalk", "musetalk/musetalkV15", "unet.pth", _MUSETALK_HF, MUSETALK_LICENCE,
     "MuseTalk 1.5 UNet (diffusers UNet2DConditionModel state dict, ~3.4 GB)"),
    ("musetalk_config", "musetalk", "musetalk/musetalkV15", "musetalk.json", _MUSETALK_HF, MUSETALK_LICENCE,
     "MuseTalk 1.5 UNet config"),
    ("sd_vae_ft_mse", "sd-vae", "musetalk/sd-vae", "diffusion_pytorch_model.bin", _SD_VAE_HF, SD_VAE_LICENCE,
     "Stable Diffusion VAE ft-MSE (MuseTalk's latent space)"),
    ("sd_vae_ft_mse_config", "sd-vae", "musetalk/sd-vae", "config.json", _SD_VAE_HF, SD_VAE_LICENCE,
     "sd-vae-ft-mse config"),
    ("whisper_tiny", "whisper", "musetalk/whisper", "pytorch_model.bin", _WHISPER_HF, WHISPER_LICENCE,
     "whisper-tiny (MuseTalk's audio features: its encoder)"),
    ("whisper_tiny_config", "whisper", "musetalk/whisper", "config.json", _WHISPER_HF, WHISPER_LICENCE,
     "whisper-tiny config"),
    ("whisper_tiny_preprocessor", "whisper", "musetalk/whisper", "preprocessor_config.json", _WHISPER_HF,
     WHISPER_LICENCE, "whisper-tiny feature-extractor config"),
)
for _name, _arch, _pack, _file, _base, _licence, _desc in _MUSETALK_PARTS:
    REGISTRY[_name] = WeightSpec(_name, "musetalk", _arch, _file, None, None, _licence, (_base + _file,), _desc,
                                 pack=_pack, unverified=NO_CHECKSUM)

# names that stand for several entries (`lipsync weights download musetalk`)
GROUPS: dict[str, tuple[str, ...]] = {"musetalk": tuple(p[0] for p in _MUSETALK_PARTS)}

DEFAULT_GENERATOR = "wav2lip_gan"
DEFAULT_DETECTOR = "s3fd"


# --- locations ---------------------------------------------------------------------------------------------

def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """True when ``LIPSYNC_OFFLINE`` asks us never to touch the network."""
    return _truthy(os.environ.get("LIPSYNC_OFFLINE"))


def user_cache_dir() -> Path:
    """``$LIPSYNC_HOME``, else ``$XDG_CACHE_HOME/lipsync``, else ``~/.cache/lipsync`` (where downloads go)."""
    home = os.environ.get("LIPSYNC_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lipsync"


def _checkout_weights_dir() -> Path | None:
    """The repo-root ``weights/`` when running from a checkout (the package's parent holds pyproject.toml)."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        return root / "weights"
    return None


def weights_dirs() -> list[Path]:
    """Folders searched for weight files, in order: checkout ``weights/``, ``./weights``, the user cache."""
    dirs: list[Path] = []
    for d in (_checkout_weights_dir(), Path.cwd() / "weights", user_cache_dir()):
        if d is None:
            continue
        d = d.absolute()
        if d not in dirs:
            dirs.append(d)
    return dirs


def insightface_home() -> Path:
    """insightface's root: ``$INSIGHTFACE_HOME``, else ``~/.insightface`` (its default ``root``)."""
    return Path(os.environ.get("INSIGHTFACE_HOME") or "~/.insightface").expanduser()


def insightface_root() -> Path:
    """Where insightface keeps its model packs: ``<insightface_home()>/models``."""
    return insightface_home() / "models"


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``,
    else ``~/.cache/torch/hub`` (a folder set with ``torch.hub.set_dir`` wins once torch is imported)."""
    hub = sys.modules.get("torch.hub")
    if hub is not None:
        return Path(hub.get_dir())
    home = os.environ.get("TORCH_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "torch" / "hub"


def library_dir(spec: WeightSpec) -> Path | None:
    """The folder of the library that also keeps ``spec`` (see ``WeightSpec.home``), or None."""
    if spec.home == "insightface":
        return insightface_root() / (spec.pack or spec.name)
    if spec.home == "torch":
        return torch_hub_dir() / "checkpoints"
    return None


def get_spec(name: str) -> WeightSpec:
    """The registry entry for ``name``; a WeightsNotFound listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsNotFound(f"unknown weights {name!r}",
                              f"known: {', '.join([*REGISTRY, *GROUPS])} (see `lipsync weights list`)") from None


def expand_names(names: Iterable[str]) -> list[str]:
    """Registry names with each group name (see ``GROUPS``) replaced by its members, in order, once each."""
    out: list[str] = []
    for n in names:
        for m in GROUPS.get(n, (n,)):
            if m not in out:
                out.append(m)
    return out


def folder_in(spec: WeightSpec, base: str | os.PathLike) -> Path:
    """Where ``spec`` goes inside the weights folder ``base``: its ``pack`` sub-folder for a file of a model's
    folder layout (no ``home``), else ``base`` itself."""
    base = Path(base)
    return base / spec.pack if spec.pack and spec.home is None else base


def default_dir(spec: WeightSpec) -> Path:
    """Folder a download of ``spec`` goes to when no ``dest_dir`` is given: its library's folder, else the user
    cache (its pack's sub-folder there, see :func:`folder_in`)."""
    return library_dir(spec) or folder_in(spec, user_cache_dir())


def candidate_paths(name: str) -> list[Path]:
    """Every place ``name`` may be, in search order (files need not exist)."""
    spec = get_spec(name)
    out: list[Path] = []
    for d in weights_dirs():
        if spec.pack:
            out.append(d / spec.pack / spec.file)
        out.append(d / spec.file)
    lib = library_dir(spec)
    if lib is not None:
        out.append(lib / spec.file)
    seen: list[Path] = []
    for p in out:
        if p not in seen:
            seen.append(p)
    return seen


def find(name: str) -> Path | None:
    """The first existing copy of a registry file (no hashing; see :func:`verify`), or None."""
    for p in candidate_paths(name):
        if p.is_file():
            return p
    return None


def urls_for(spec: WeightSpec) -> list[str]:
    """Download URLs in the order tried; ``LIPSYNC_WEIGHTS_MIRROR`` replaces them all."""
    mirror = os.environ.get("LIPSYNC_WEIGHTS_MIRROR", "").strip()
    if mirror:
        sub = f"{spec.pack}/" if spec.pack and spec.home is None else ""  # config.json of two models
        return [f"{mirror.rstrip('/')}/{sub}{spec.download_name}"]
    return list(spec.urls)


def human_size(n: int | None) -> str:
    """Bytes as a short decimal string (``435.8 MB``)."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def download_command(names: Iterable[str]) -> str:
    return "lipsync weights download " + " ".join(names)


def _not_found(spec: WeightSpec, why: str | None, target: Path) -> WeightsNotFound:
    urls = " ".join(urls_for(spec))
    group = next((g for g, members in GROUPS.items() if spec.name in members), spec.name)  # fetch all parts
    return WeightsNotFound(
        f"{spec.name} weights ({spec.file}, {human_size(spec.size)}) not found" + (f" and {why}" if why else ""),
        f"run `{download_command([group])}` when online, or download {urls} into {target}; "
        f"licence: {spec.licence}",
    )


# --- hashing -----------------------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike, progress: ProgressFn | None = None, _h=None) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks; ``progress(done, total)`` in bytes."""
    h = _h if _h is not None else hashlib.sha256()
    path = Path(path)
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return h.hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of hashing one present file: ``ok`` or ``reason`` (size / sha256 mismatch)."""

    name: str
    path: Path
    ok: bool
    reason: str = ""
    size: int = 0


def verify_file(spec: WeightSpec, path: str | os.PathLike,
                progress: ProgressFn | None = None) -> VerifyResult:
    """Check one file against its registry entry: size first (cheap), then the sha256."""
    path = Path(path)
    size = path.stat().st_size
    if spec.sha256 is None:  # nothing published to check against
        return VerifyResult(spec.name, path, True, f"unverified: {spec.unverified}", size)
    if size != spec.size:
        return VerifyResult(spec.name, path, False, f"size {size} B, expected {spec.size} B", size)
    digest = sha256_file(path, progress)
    if digest != spec.sha256:
        reason = f"sha256 {digest[:12]}..., expected {spec.sha256[:12]}..."
        return VerifyResult(spec.name, path, False, reason, size)
    return VerifyResult(spec.name, path, True, "", size)


def verify(names: Iterable[str] | None = None, *,
           progress: Callable[[str, int, int | None], None] | None = None) -> list[VerifyResult]:
    """Hash every present copy of the named registry files (all when ``names`` is None).

    ``progress(name, done_bytes, total_bytes)``. Files that are absent are skipped (see :func:`find`).
    """
    results = []
    for name in (list(names) if names else list(REGISTRY)):
        spec = get_spec(name)
        for p in candidate_paths(name):
            if p.is_file():
                cb = (lambda d, t, _n=name: progress(_n, d, t)) if progress else None
                results.append(verify_file(spec, p, cb))
    return results


# --- download ----------------------------------------------------------------------------------------------

class _AttemptFailed(Exception):
    """One URL attempt failed; ``network`` when the host could not be reached at all."""

    def __init__(self, message: str, network: bool = False, progressed: bool = False):
        super().__init__(message)
        self.network = network
        self.progressed = progressed


def _open(url: str, start: int):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=TIMEOUT_S)  # scheme checked in _fetch
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # our part is already complete (or longer than the file)
            raise _AttemptFailed("HTTP 416 (range not satisfiable)") from None
        raise _AttemptFailed(f"HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise _AttemptFailed(f"cannot connect ({reason})", network=True) from None


def _fetch(url: str, part: Path, size: int | None, sha256: str | None,
           progress: ProgressFn | None) -> None:
    """Bring ``part`` to the complete file from ``url``, resuming what is there; verify size+hash if known.

    Raises _AttemptFailed; leaves a good prefix in ``part`` for the next attempt, deletes it if it is wrong.
    """
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise _AttemptFailed(f"unsupported URL scheme in {url}")
    h = hashlib.sha256()
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if have:
        sha256_file(part, _h=h)  # hash the prefix we already have, so the final digest covers everything
    if size is not None and have == size:
        if h.hexdigest() == sha256:
            return
        part.unlink()
        h, have = hashlib.sha256(), 0

    resp = _open(url, have)
    try:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if have and status == 206:
            crange = resp.headers.get("Content-Range", "")
            if not crange.startswith(f"bytes {have}-"):
                raise _AttemptFailed(f"server answered Range {have}- with {crange!r}")
            mode = "ab"
        else:
            if have:
                log.info("%s ignored the Range request; restarting from byte 0", url)
            h, have, mode = hashlib.sha256(), 0, "wb"
        total = have + length if length is not None else size
        if size is not None and length is not None and have + length != size:
            raise _AttemptFailed(f"server offers {human_size(have + length)} ({have + length} B), "
                                 f"expected {size} B: not the right file")
        done = have
        if progress:
            progress(done, total)
        try:
            f = open(part, mode)  # noqa: SIM115  (closed by the with below)
        except OSError as err:
            raise write_error(part, err) from None
        with f:
            while True:
                try:
                    chunk = resp.read(CHUNK_BYTES)
                except (TimeoutError, OSError, http.client.HTTPException) as err:
                    raise _AttemptFailed(f"connection lost after {done} B ({err})",
                                         progressed=done > have) from None
                if not chunk:
                    break
                if size is not None and done + len(chunk) > size:
                    f.close()
                    part.unlink()
                    raise _AttemptFailed(f"server sent more than the expected {size} B: not the right file")
                try:
                    f.write(chunk)
                except OSError as err:  # disk full: keep the good prefix for a resume, stop trying mirrors
                    raise write_error(part, err) from None
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    finally:
        resp.close()
    if size is not None and done < size:
        raise _AttemptFailed(f"download stopped at {done} of {size} B", progressed=done > have)
    if length is not None and done < have + length:
        raise _AttemptFailed(f"download stopped at {done} of {have + length} B", progressed=done > have)
    if sha256 is not None and h.hexdigest() != sha256:
        part.unlink()
        raise _AttemptFailed(f"sha256 mismatch ({h.hexdigest()[:12]}..., expected {sha256[:12]}...)")


def _extract_member(spec: WeightSpec, archive: Path, target: Path) -> None:
    """Copy ``spec.archive_member`` out of a zip beside ``target``; verify it, then rename into place."""
    member = spec.archive_member
    assert member is not None
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if Path(n).name == member]
            if not names:
                raise DownloadError(f"{archive.name} does not contain {member}")
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as out, zf.open(names[0]) as src:
                    shutil.copyfileobj(src, out, CHUNK_BYTES)
                result = verify_file(spec, tmp)
                if not result.ok:
                    raise DownloadError(f"{member} from {archive.name}: {result.reason}",
                                        "the mirror serves a different file")
    except zipfile.BadZipFile as err:
        archive.unlink(missing_ok=True)
        raise DownloadError(f"{archive.name} is not a valid zip ({err})") from None
    except DownloadError:
        archive.unlink(missing_ok=True)
        raise
    archive.unlink(missing_ok=True)


LOCK_POLL_S = 0.2  # how often a waiting process checks the lock (and notifies once that it waits)


@contextmanager
def download_lock(target: Path, notify: NotifyFn | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``<target>.lock`` (``fcntl.flock``) while ``target`` is being downloaded.

    A second process blocks here until the first is done (``notify`` is told once that it waits), so it never
    writes the same ``.part``. The lock file is deleted on release; a waiter that then holds the lock of a
    deleted file takes the lock again on a fresh file (checked by inode), so two processes never both believe
    they hold it. Without ``fcntl`` (Windows) nothing is locked.
    """
    if fcntl is None:
        yield
        return
    lock = target.with_name(target.name + ".lock")
    told = False
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_error(lock, err) from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told:
                        told = True
                        msg = f"another process is downloading {target.name}; waiting for it to finish"
                        log.info(msg)
                        if notify:
                            notify(msg)
                    time.sleep(LOCK_POLL_S)
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder before us deleted this file: lock the new one
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def download(name: str, dest_dir: str | os.PathLike | None = None, *,
             progress: ProgressFn | None = None, notify: NotifyFn | None = None) -> Path:
    """Download a registry file into ``dest_dir`` (default: :func:`default_dir`) and return its path.

    Tries each URL in turn (``LIPSYNC_WEIGHTS_MIRROR`` replaces them); resumes ``<file>.part`` with HTTP
    Range; checks the announced size before streaming and the sha256 after; renames into place only when
    both match.
    A present, correct file is returned without downloading. Another process downloading the same file is
    waited for (:func:`download_lock`; ``notify`` says so once), then its file is returned. Raises
    DownloadError when every URL fails (``.network_only`` is True when no host could be reached),
    WeightsNotFound for an unknown name, WriteError when the folder or file cannot be written.
    """
    return _download(name, dest_dir, progress, notify)


def _download(name: str, dest_dir: str | os.PathLike | None, progress: ProgressFn | None,
              notify: NotifyFn | None = None) -> Path:
    spec = get_spec(name)
    dest = Path(dest_dir) if dest_dir is not None else default_dir(spec)
    target = dest / spec.file
    if target.is_file() and verify_file(spec, target).ok:
        return target
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(dest, err) from None
    with download_lock(target, notify):
        if target.is_file():  # finished by the process we waited for, or an old copy
            if verify_file(spec, target).ok:
                return target
            log.warning("%s exists but does not match the registry; downloading it again", target)
        return _download_locked(spec, dest, target, progress)


def _download_locked(spec: WeightSpec, dest: Path, target: Path, progress: ProgressFn | None) -> Path:
    fetched_name = spec.download_name
    part = dest / f"{fetched_name}.part"
    size, sha = (None, None) if spec.archive_member else (spec.size, spec.sha256)
    failures: list[str] = []
    all_network = True
    for url in urls_for(spec):
        for attempt in range(RETRIES_PER_URL):
            try:
                _fetch(url, part, size, sha, progress)
            except _AttemptFailed as err:
                log.warning("%s: %s", url, err)
                all_network &= err.network
                if err.progressed and attempt + 1 < RETRIES_PER_URL:
                    continue  # same URL again, resuming from the longer part
                failures.append(f"{url}: {err}")
                break
            else:
                if spec.archive_member:
                    _extract_member(spec, part, target)
                else:
                    try:
                        os.replace(part, target)
                    except OSError as err:
                        raise write_error(target, err) from None
                return target
    if not urls_for(spec):
        failures.append("no URL known")
    kept = part.is_file() and part.stat().st_size > 0  # a good prefix; a wrong file is never kept
    err = DownloadError(f"could not download {spec.name} ({spec.file}): " + "; ".join(failures),
                        f"the partial file {part} is kept and resumed next time" if kept else None)
    err.network_only = all_network and bool(failures)  # type: ignore[attr-defined]
    raise err


def resolve(name: str, explicit: str | os.PathLike | None = None, *, offline: bool | None = None,
            download: bool = True, progress: ProgressFn | None = None,
            notify: NotifyFn | None = None) -> Path:
    """Path of the weights to use for registry entry ``name``.

    ``explicit`` (a user-given path) wins and must exist. Otherwise the first copy :func:`find` sees.
    Otherwise, unless offline (``offline`` true, or ``LIPSYNC_OFFLINE=1``) or ``download`` is False, download
    it into :func:`default_dir`, announcing it through ``notify`` (name, size, URL, licence) first. When
    offline, not downloading, or when no download host can be reached, raise WeightsNotFound naming the exact
    ``lipsync weights download NAME`` command, the URLs and the target folder.
    """
    from lipsync_cli.errors import InputNotFound

    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise InputNotFound(f"weights file not found: {p}", f"or omit it to use the {name} default")
        return p
    spec = get_spec(name)
    found = find(name)
    if found is not None:
        return found
    target = default_dir(spec)
    offline = bool(offline) or is_offline()  # the environment variable applies even when the arg is False
    if offline or not download:
        why = "offline mode is on (--offline or LIPSYNC_OFFLINE=1)" if offline else None
        raise _not_found(spec, why, target)
    if notify:
        urls = urls_for(spec)
        source = urls[0] if urls else "?"
        notify(f"downloading {spec.name} ({spec.file}, {human_size(spec.size)}) from {source} "
               f"into {target}; licence: {spec.licence}")
    try:
        return _download(name, target, progress, notify)
    except DownloadError as err:
        if getattr(err, "network_only", False):
            raise _not_found(spec, "the download hosts cannot be reached", target) from None
        raise


def file_name(spec: WeightSpec) -> str:
    """The name to give the file in a weights folder: ``wav2lip_gan.pth``; a pack's member in its folder
    (``buffalo_l/det_10g.onnx``)."""
    return f"{spec.pack}/{spec.file}" if spec.pack else spec.file


def status_rows() -> list[dict]:
    """One dict per registry entry for ``lipsync weights list``: spec fields plus ``path`` (or None), ``file_name``
    (see :func:`file_name`) and ``found_size`` (bytes of the file at ``path``: a size other than ``size`` is what
    :func:`verify` reports as a mismatch, without hashing)."""
    rows = []
    for name, spec in REGISTRY.items():
        path = find(name)
        rows.append({"name": name, "kind": spec.kind, "arch": spec.arch, "file": spec.file, "size": spec.size,
                     "file_name": file_name(spec), "licence": spec.licence, "path": path,
                     "found_size": path.stat().st_size if path is not None else None,
                     "description": spec.description})
    return rows

