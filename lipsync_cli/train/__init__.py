"""Training: the SyncNet_color lip-sync expert and the Wav2Lip-family generators (``lipsync train``), and the
LRS2 preprocessing that feeds them (``lipsync prepare``).

Library entry points (heavy modules are imported lazily):
    TrainConfig, make_config, load_config_file      (config.py)
    train(cfg, progress=None) -> TrainResult        (core.py)
    prepare(lrs2_root, out, options, ...)           (prepare.py)
    make_synthetic_dataset / make_synthetic_lrs2    (synthetic.py)
"""

from lipsync_cli.train.config import TrainConfig, load_config_file, make_config

__all__ = ["TrainConfig", "load_config_file", "make_config"]
