"""MuseTalk 1.5 (TMElyralab/MuseTalk, MIT): one-step inpainting of a 256 px face in the latent space of the
Stable Diffusion VAE (sd-vae-ft-mse), driven by whisper-tiny encoder features through cross-attention.

The networks are diffusers' ``UNet2DConditionModel`` (built from the released ``musetalk.json``) and
``AutoencoderKL``, and transformers' Whisper encoder and feature extractor: the same classes upstream calls, so
the released files load unchanged. They are optional: ``pip install 'lipsync-cli[musetalk]'`` (``uv sync --extra
musetalk``); nothing here imports them before a model is loaded.

Pipeline, as upstream's ``scripts/inference.py --version v15`` runs it (tests/test_musetalk.py checks each stage
against arrays computed by the upstream code, tests/data/musetalk/README.md):

    audio (16 kHz mono float) -> whisper log-mel per 30 s segment (1, 80, 3000)
      -> encoder hidden states: embeddings + each of the 4 layers, stacked (1, 1500, 5, 384) per segment
      -> trimmed to the audio's length at 50 feature frames/s, zero-padded, and cut into one window per video
         frame: 10 feature frames (2 video frames of context each side at 25 fps) x 5 layers -> (50, 384)
      -> + sinusoidal positional encoding (d_model 384)                       = the UNet's encoder_hidden_states
    face crop (256, 256, 3) BGR uint8 -> RGB in [-1, 1]; the lower half blacked out (-1) for the masked copy
      -> VAE posterior sample x 0.18215 for the masked copy and the reference: (8, 32, 32)
    UNet(latents, t=0, audio) -> (4, 32, 32) -> / 0.18215 -> VAE decode -> (256, 256, 3) BGR uint8

API (what the dub pipeline calls)::

    model = load_musetalk(unet_path, config_path, vae_dir, whisper_dir, device="cpu", precision="fp32")
    chunks = model.audio_chunks(wav_16k, fps, n_frames)      # (n_frames, 50, 384) float32, numpy
    latents = model.encode_reference(faces_bgr_256)          # (N, 8, 32, 32) torch, on the device; once per track
    faces = model.generate(latents, chunks)                  # (N, 256, 256, 3) uint8 BGR, numpy

``encode_reference`` takes the face crops of the frames to dub (upstream encodes every frame of the source video,
not one still); ``generate`` pairs latent i with audio window i, batched as the caller chooses.

Where we differ from upstream, on purpose: the VAE posterior noise comes from a CPU generator seeded by ``seed``
(upstream draws it from torch's global RNG, on the model's device); on the CPU with ``torch.manual_seed(seed)``
before the encode loop the two are the same numbers. And ``fps`` is used as given: upstream truncates it with
``int(fps)``, which desynchronises the audio at 29.97 or 23.976 fps; at integer frame rates the windows are the same.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync_cli.errors import CheckpointError, CheckpointMismatch, InputNotFound, LipsyncError

INSTALL_HINT = "install the extra: pip install 'lipsync-cli[musetalk]' (or: uv sync --extra musetalk)"

SAMPLE_RATE = 16000  # whisper's input rate, samples/s
SEGMENT_SECONDS = 30  # whisper encodes 30 s windows (the feature extractor pads each to this)
SEGMENT_SAMPLES = SEGMENT_SECONDS * SAMPLE_RATE
WHISPER_FPS = 50  # encoder frames per second: 100 mel frames/s (hop 160), halved by the stride-2 conv
PAD_LEFT = 2  # video frames of audio context before the frame (upstream's audio_padding_length_left)
PAD_RIGHT = 2  # ... and after it (audio_padding_length_right)
WINDOW = 2 * (PAD_LEFT + PAD_RIGHT + 1)  # 10 encoder frames per video frame
N_LAYERS = 5  # whisper-tiny: the embedding output and its 4 encoder layers
AUDIO_DIM = 384  # whisper-tiny's d_model = the UNet's cross_attention_dim
FACE_SIZE = 256  # the face crop, pixels
LATENT_SIZE = FACE_SIZE // 8  # 32: the VAE downsamples 8x
LATENT_CHANNELS = 4
SCALING_FACTOR = 0.18215  # sd-vae-ft-mse's (diffusers' default, which its config leaves out)
PE_MAX_LEN = 5000  # upstream's PositionalEncoding table length


def _import_extra():
    """``(diffusers, transformers)``, or a one-line LipsyncError saying how to install them."""
    try:
        import diffusers
        import transformers
    except ImportError as err:
        raise LipsyncError(f"MuseTalk needs diffusers and transformers ({err.name} is not installed)",
                           INSTALL_HINT) from None
    return diffusers, transformers


# --- pure parts: positional encoding, audio windows, face tensors ------------------------------------------------

def positional_encoding(seq_len: int, d_model: int = AUDIO_DIM):
    """Upstream's sinusoidal table ``pe[pos, 2i] = sin(pos / 10000^(2i/d))``, ``pe[pos, 2i+1] = cos(...)``:
    (1, seq_len, d_model) float32."""
    import torch

    if seq_len > PE_MAX_LEN:
        raise ValueError(f"sequence of {seq_len} > {PE_MAX_LEN}")
    position = torch.arange(0, PE_MAX_LEN, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    pe = torch.zeros(PE_MAX_LEN, d_model)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe[None, :seq_len]


def frame_count(n_samples: int, fps: float) -> int:
    """Video frames the audio covers, as upstream counts them: ``floor(seconds * fps)``."""
    return math.floor(n_samples / SAMPLE_RATE * fps)


def window_start(frame_index: int, fps: float) -> int:
    """First encoder frame of video frame ``frame_index``'s window, in the left-padded feature sequence
    (see :func:`whisper_windows`): ``floor(frame_index * 50 / fps)``."""
    return math.floor(frame_index * (WHISPER_FPS / fps))


def whisper_windows(hidden: np.ndarray, n_samples: int, fps: float, n_frames: int | None = None) -> np.ndarray:
    """Per-frame audio windows from stacked encoder states, as upstream's ``get_whisper_chunk``.

    ``hidden``: (T, 5, 384) the concatenated 30 s segments' states (T = 1500 per segment); ``n_samples`` the
    audio's length at 16 kHz. The states are trimmed to ``floor(seconds * 50)`` frames, padded with
    ``ceil(50 / fps) * 2`` zero frames in front and at least ``ceil(50 / fps) * 6`` behind, and frame i takes
    the 10 frames from :func:`window_start`. ``n_frames`` defaults to :func:`frame_count`; frames past the end
    of the audio get zero (padding) features. Returns (n_frames, 50, 384) float32, ordered (time, layer).
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if n_frames is None:
        n_frames = frame_count(n_samples, fps)
    actual = math.floor(n_samples / SAMPLE_RATE * WHISPER_FPS)
    hidden = hidden[:actual]  # (T', 5, 384)
    pad = math.ceil(WHISPER_FPS / fps)
    left = pad * PAD_LEFT
    needed = window_start(max(n_frames - 1, 0), fps) + WINDOW  # length the last window reaches
    right = max(pad * 3 * PAD_RIGHT, needed - left - len(hidden))
    padded = np.concatenate([np.zeros((left, *hidden.shape[1:]), hidden.dtype), hidden,
                             np.zeros((right, *hidden.shape[1:]), hidden.dtype)])
    out = np.empty((n_frames, WINDOW * N_LAYERS, hidden.shape[-1]), np.float32)
    for i in range(n_frames):
        s = window_start(i, fps)
        out[i] = padded[s:s + WINDOW].reshape(WINDOW * hidden.shape[1], hidden.shape[-1])
    return out


def face_tensor(faces_bgr: np.ndarray, masked: bool):
    """(N, 256, 256, 3) BGR uint8 -> (N, 3, 256, 256) RGB float32 in [-1, 1], as upstream's ``preprocess_img``;
    ``masked`` blacks out the lower half (rows 128:, which become -1)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(faces_bgr[..., ::-1]).astype(np.float64) / 255.0).float()
    x = x.permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    if masked:
        x[:, :, FACE_SIZE // 2:, :] = 0.0
    return (x - 0.5) / 0.5


def check_faces(faces: np.ndarray) -> np.ndarray:
    faces = np.asarray(faces)
    if faces.ndim == 3:
        faces = faces[None]
    if faces.ndim != 4 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE, 3) or faces.dtype != np.uint8:
        raise ValueError(f"faces must be (N, {FACE_SIZE}, {FACE_SIZE}, 3) uint8 BGR, got {faces.shape} {faces.dtype}")
    return faces


# --- crop geometry (upstream's preprocessing.get_landmark_and_bbox, scripts/inference.py, blending.get_crop_box) ---

EXTRA_MARGIN = 10  # v1.5: pixels added below the chin (scripts/inference.py --extra_margin)
PASTE_EXPAND = 1.5  # blending.get_image: the square pasted back is 1.5x the face box's longer side


def face_box(landmarks68: np.ndarray, frame_height: int, bbox_shift: int = 0, extra_margin: int = EXTRA_MARGIN,
             fallback=None) -> tuple[int, int, int, int] | None:
    """The face crop ``(x1, y1, x2, y2)`` (pixels, exclusive ends) MuseTalk 1.5 cuts from a frame.

    ``landmarks68``: the 68 face points (x, y) (upstream: DWPose whole-body keypoints 23:91, truncated to int).
    x from the leftmost to the rightmost point; the bottom at the lowest point (the chin); the top as far above
    point 29 (the nose) as the chin is below it, ``bbox_shift`` pixels moving that centre point down (+) or up
    (-) (upstream v1.5's inference.py fixes it at 0; v1 and realtime_inference expose it), clamped at 0. Then
    ``extra_margin`` pixels more below the chin, clamped to the frame. When that box is empty or starts left of
    the frame, upstream uses the detector's box ``fallback`` instead (None here when none is given).
    """
    pts = np.asarray(landmarks68).astype(np.int32)
    centre_y = int(pts[29, 1]) + int(bbox_shift)
    chin_y = int(pts[:, 1].max())
    x1, x2 = int(pts[:, 0].min()), int(pts[:, 0].max())
    y1 = max(0, centre_y - (chin_y - centre_y))
    box = (x1, y1, x2, chin_y)
    if chin_y - y1 <= 0 or x2 - x1 <= 0 or x1 < 0:
        if fallback is None:
            return None
        box = tuple(int(v) for v in fallback)
    x1, y1, x2, y2 = box
    return x1, y1, x2, min(y2 + int(extra_margin), int(frame_height))


def paste_box(box: tuple[int, int, int, int], expand: float = PASTE_EXPAND) -> tuple[int, int, int, int]:
    """The square around ``box`` that upstream's blending crops, masks and pastes back (``get_crop_box``):
    centre ``((x1 + x2) // 2, (y1 + y2) // 2)``, half-side ``int(max(w, h) // 2 * expand)``; it may leave the
    frame (PIL's crop pads with black there)."""
    x1, y1, x2, y2 = box
    xc, yc = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * expand)
    return xc - s, yc - s, xc + s, yc + s


# --- the model ---------------------------------------------------------------------------------------------------

@dataclass
class MuseTalk:
    """The loaded MuseTalk 1.5 networks (see the module docstring for the API). ``dtype`` is the networks'
    dtype (float32, or float16/bfloat16 for ``precision``); inputs are cast to it as upstream does."""

    unet: object  # diffusers UNet2DConditionModel
    vae: object  # diffusers AutoencoderKL
    encoder: object  # transformers WhisperEncoder
    feature_extractor: object  # transformers WhisperFeatureExtractor
    device: object
    dtype: object
    seed: int = 0

    def input_features(self, wav_16k: np.ndarray) -> list:
        """Whisper log-mel per 30 s segment: a list of (1, 80, 3000) float32 tensors."""
        wav = np.asarray(wav_16k, dtype=np.float32).reshape(-1)
        if wav.size == 0:
            raise ValueError("empty audio")
        segments = [wav[i:i + SEGMENT_SAMPLES] for i in range(0, len(wav), SEGMENT_SAMPLES)]
        return [self.feature_extractor(s, return_tensors="pt", sampling_rate=SAMPLE_RATE).input_features
                for s in segments]

    def encoder_states(self, features: list) -> np.ndarray:
        """Stacked encoder hidden states of every segment, concatenated in time: (T, 5, 384) float32."""
        import torch

        out = []
        with torch.no_grad():
            for f in features:
                states = self.encoder(f.to(self.device, self.dtype), output_hidden_states=True).hidden_states
                out.append(torch.stack(states, dim=2)[0].float().cpu())  # (1500, 5, 384)
        return torch.cat(out, 0).numpy()

    def audio_chunks(self, wav_16k: np.ndarray, fps: float, n_frames: int | None = None) -> np.ndarray:
        """The UNet's audio input for each video frame, before the positional encoding: (n_frames, 50, 384)
        float32. ``wav_16k``: mono float audio at 16 kHz; ``n_frames`` defaults to ``floor(seconds * fps)``."""
        wav = np.asarray(wav_16k, dtype=np.float32).reshape(-1)
        return whisper_windows(self.encoder_states(self.input_features(wav)), len(wav), fps, n_frames)

    def encode_reference(self, faces_bgr_256: np.ndarray, sample: bool = True):
        """VAE latents of the lower-half-masked faces and the whole faces, concatenated: (N, 8, 32, 32) on the
        device, in the networks' dtype. ``sample`` draws from the posterior as upstream does (noise seeded by
        ``seed``, two draws per face, masked then whole, in order); False takes its mean."""
        import torch

        faces = check_faces(faces_bgr_256)
        n = len(faces)
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.empty((n, 2, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE))
        for i in range(n):  # upstream's order: (masked, whole) of face 0, then of face 1...
            for j in range(2):
                noise[i, j] = torch.randn((1, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE), generator=gen)[0]
        halves = []
        with torch.no_grad():
            for j, masked in enumerate((True, False)):
                x = face_tensor(faces, masked).to(self.device, self.dtype)
                dist = self.vae.encode(x).latent_dist
                z = dist.mean + dist.std * noise[:, j].to(self.device, dist.mean.dtype) if sample else dist.mean
                halves.append(SCALING_FACTOR * z)
        return torch.cat(halves, dim=1)  # (N, 8, 32, 32)

    def unet_latents(self, latents, audio_chunks):
        """The UNet's output latents (N, 4, 32, 32) for input latents (N, 8, 32, 32) and audio windows
        (N, 50, 384) (positional encoding added here)."""
        import torch

        chunks = torch.as_tensor(np.asarray(audio_chunks, dtype=np.float32))
        if chunks.ndim != 3 or chunks.shape[1:] != (WINDOW * N_LAYERS, AUDIO_DIM):
            raise ValueError(f"audio chunks must be (N, {WINDOW * N_LAYERS}, {AUDIO_DIM}), got {tuple(chunks.shape)}")
        if len(chunks) != len(latents):
            raise ValueError(f"{len(latents)} latents but {len(chunks)} audio chunks")
        with torch.no_grad():
            audio = (chunks + positional_encoding(chunks.shape[1])).to(self.device, self.dtype)
            t = torch.tensor([0], device=self.device)
            return self.unet(latents.to(self.device, self.dtype), t, encoder_hidden_states=audio).sample

    def decode(self, latents) -> np.ndarray:
        """UNet latents (N, 4, 32, 32) -> (N, 256, 256, 3) BGR uint8, as upstream's ``decode_latents``."""
        import torch

        with torch.no_grad():
            image = self.vae.decode(((1 / SCALING_FACTOR) * latents).to(self.dtype)).sample
        image = (image / 2 + 0.5).clamp(0, 1)
        image = image.detach().cpu().permute(0, 2, 3, 1).float().numpy()
        image = (image * 255).round().astype(np.uint8)
        return np.ascontiguousarray(image[..., ::-1])

    def generate(self, ref_latents, audio_chunks) -> np.ndarray:
        """Dubbed faces: (N, 256, 256, 3) BGR uint8 for latents (N, 8, 32, 32) from :meth:`encode_reference`
        and audio windows (N, 50, 384) from :meth:`audio_chunks` (one per face, in order)."""
        return self.decode(self.unet_latents(ref_latents, audio_chunks))


@contextlib.contextmanager
def _quiet_libraries(diffusers, transformers):
    """diffusers' and transformers' notices (no safetensors file, no accelerate, loading bars) off while loading:
    they are not the user's business; errors still raise."""
    saved = (diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity(),
             transformers.utils.logging.is_progress_bar_enabled())
    diffusers.utils.logging.set_verbosity(50)  # CRITICAL: it logs "no .safetensors file" as an error, then loads .bin
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(saved[0])
        transformers.utils.logging.set_verbosity(saved[1])
        if saved[2]:
            transformers.utils.logging.enable_progress_bar()


# --- loading -------------------------------------------------------------------------------------------------------

def build_unet(config: dict, device: str | None = None):
    """``UNet2DConditionModel`` from a ``musetalk.json`` dict (keys starting with '_' are metadata);
    ``device="meta"`` builds it without memory (for key/shape checks)."""
    import torch

    diffusers, _ = _import_extra()
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    if device == "meta":
        with torch.device("meta"):
            return diffusers.UNet2DConditionModel(**kwargs)
    return diffusers.UNet2DConditionModel(**kwargs)


def _read_config(config_path: Path) -> dict:
    if not config_path.is_file():
        raise InputNotFound(f"MuseTalk UNet config not found: {config_path}",
                            "it is musetalkV15/musetalk.json of the release (`lipsync weights download musetalk`)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_path} is not a MuseTalk config (not JSON: {err})",
                              "use musetalkV15/musetalk.json of the release") from None
    if not isinstance(config, dict) or config.get("in_channels") != 2 * LATENT_CHANNELS \
            or config.get("cross_attention_dim") != AUDIO_DIM:
        raise CheckpointMismatch(f"{config_path} is not a MuseTalk UNet config (expected in_channels 8 and "
                                 f"cross_attention_dim 384)", "use musetalkV15/musetalk.json of the release")
    return config


def _load_unet(unet_path: Path, config_path: Path):
    import torch

    config = _read_config(config_path)
    if not unet_path.is_file():
        raise InputNotFound(f"MuseTalk UNet weights not found: {unet_path}",
                            "it is musetalkV15/unet.pth of the release (`lipsync weights download musetalk`)")
    try:
        state = torch.load(unet_path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or pickled code
        raise CheckpointError(f"cannot read {unet_path} as a MuseTalk UNet state dict ({type(err).__name__})",
                              "download musetalkV15/unet.pth again") from None
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise CheckpointMismatch(f"{unet_path} is not a plain state dict like musetalkV15/unet.pth")
    unet = build_unet(config, device="meta")  # no random init of 850 M parameters: the file's tensors are used
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        shape = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        first = (missing or extra or shape)[0]
        raise CheckpointMismatch(
            f"{unet_path} does not fit {config_path.name}: {len(missing)} keys missing, {len(extra)} unexpected, "
            f"{len(shape)} of another shape (first: {first})",
            "use the unet.pth and musetalk.json of one release (musetalkV15)")
    unet.load_state_dict(state, assign=True)
    return unet


def _require_dir(path: Path, what: str, files: tuple[str, ...]) -> None:
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputNotFound(f"{what} folder not found or without config.json: {path}",
                            f"it holds {', '.join(files)} (`lipsync weights download musetalk`)")


def load_musetalk(unet_path, config_path, vae_dir, whisper_dir, device="cpu", precision: str = "fp32",
                  seed: int = 0) -> MuseTalk:
    """Load MuseTalk 1.5 from the released files: ``musetalkV15/unet.pth`` + ``musetalk.json``, the
    sd-vae-ft-mse folder (config.json + diffusion_pytorch_model.bin or .safetensors), the whisper-tiny folder
    (config.json, preprocessor_config.json, pytorch_model.bin or model.safetensors).

    ``precision`` is concrete ('fp32', 'fp16', 'bf16'; see ``device.resolve_precision``): the networks are cast
    to it as upstream's ``--use_float16`` does. Raises LipsyncError (extra missing), InputNotFound,
    CheckpointError, CheckpointMismatch with one-line messages.
    """
    import torch

    from lipsync_cli.device import amp_dtype

    diffusers, transformers = _import_extra()
    unet_path, config_path, vae_dir, whisper_dir = map(Path, (unet_path, config_path, vae_dir, whisper_dir))
    dtype = amp_dtype(precision) or torch.float32
    with _quiet_libraries(diffusers, transformers):
        unet = _load_unet(unet_path, config_path)
        _require_dir(vae_dir, "sd-vae-ft-mse", ("config.json", "diffusion_pytorch_model.bin"))
        _require_dir(whisper_dir, "whisper-tiny", ("config.json", "preprocessor_config.json", "pytorch_model.bin"))
        try:
            vae = diffusers.AutoencoderKL.from_pretrained(vae_dir)
        except (OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"cannot load the VAE from {vae_dir}: {str(err).splitlines()[0]}",
                                  "it must be stabilityai/sd-vae-ft-mse's config.json and weights") from None
        try:
            whisper = transformers.WhisperModel.from_pretrained(whisper_dir)
            extractor = transformers.WhisperFeatureExtractor.from_pretrained(whisper_dir)
        except (OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"cannot load whisper from {whisper_dir}: {str(err).splitlines()[0]}",
                                  "it must be openai/whisper-tiny's config, preprocessor config and weights") from None
        if whisper.config.d_model != AUDIO_DIM or whisper.config.encoder_layers != N_LAYERS - 1:
            raise CheckpointMismatch(f"{whisper_dir} is not whisper-tiny (d_model {whisper.config.d_model}, "
                                     f"{whisper.config.encoder_layers} encoder layers; expected 384 and 4)")
        encoder = whisper.get_encoder()
        del whisper  # the decoder is not used
        modules = [m.to(device=device, dtype=dtype).eval().requires_grad_(False) for m in (unet, vae, encoder)]
    return MuseTalk(*modules, extractor, torch.device(device), dtype, seed)
