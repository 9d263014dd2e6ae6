"""Constants shared by every stage, declared once (Wav2Lip's hparams, made immutable).

Derived values are computed from the primary ones and checked with exact-division asserts.
"""

# --- audio (Wav2Lip hparams.py) ---
SAMPLE_RATE = 16000  # Hz: every audio track is converted to 16 kHz mono
N_FFT = 800  # samples (50 ms)
HOP_LENGTH = 200  # samples (12.5 ms)
WIN_LENGTH = 800  # samples
N_MELS = 80
FMIN = 55.0  # Hz
FMAX = 7600.0  # Hz
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0  # mel values are symmetric in [-4, 4]

assert SAMPLE_RATE % HOP_LENGTH == 0
MEL_FPS = SAMPLE_RATE // HOP_LENGTH  # 80 mel steps per second
MEL_WINDOW = 16  # mel steps per generator window (0.2 s)

# --- video / faces ---
DEFAULT_FPS = 25.0  # frames per second for still images and the training data
FACE_SIZE = 96  # generator input/output side, pixels
assert FACE_SIZE % 2 == 0
FACE_HALF = FACE_SIZE // 2  # rows FACE_HALF: are masked in the generator's target input
SYNC_T = 5  # frames per SyncNet window
DEFAULT_PADS = (0, 10, 0, 0)  # top, bottom, left, right (Wav2Lip's --pads)

# --- tracking ---
MAX_GAP = 25  # frames a face may be missing and still be the same face (1 s at 25 fps)
CUT_THRESHOLD = 27.0  # PySceneDetect ContentDetector's default: HSV change (0-255) between frames that is a cut

# --- face restoration (dub --enhance) ---
ENHANCE_NOISE = ("fixed", "random")  # GFPGAN's noise: the stored buffers (deterministic) | fresh per call (GFPGANer)
