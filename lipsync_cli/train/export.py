"""Export a training checkpoint in the upstream release layout (``lipsync_expert.pth``, ``wav2lip.pth``,
``visual_quality_disc.pth``): ``{"state_dict", "optimizer": None, "global_step", "global_epoch"}``, plain
keys; a generator also carries ``mel_lead``, the audio/video lead (frames) it was trained with.

Upstream scripts (and anything that reads the released files) then load our models unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

from lipsync_cli.errors import CheckpointMismatch

# what can be exported, by the kind stored in our checkpoints
EXPORTABLE = ("syncnet_color", "wav2lip", "attn_wav2lip", "lpips_attn_wav2lip")


def export_upstream(checkpoint: str | os.PathLike, out: str | os.PathLike, part: str = "model") -> Path:
    """Write ``checkpoint``'s model (``part="model"``) or its discriminator (``part="disc"``) to ``out`` in
    the upstream container; return ``out``. Raises CheckpointMismatch for files that are not ours."""
    from lipsync_cli.checkpoint import FORMAT_NAME, atomic_save, generator_mel_lead, load_file
    from lipsync_cli.models import ARCHS

    obj = load_file(checkpoint)
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT_NAME and obj.get("kind") in EXPORTABLE):
        raise CheckpointMismatch(
            f"{checkpoint} is not a lipsync_cli training checkpoint",
            "export RUN/best.pt or RUN/last.pt of `lipsync train`",
        )
    if part == "disc":
        if "disc_state_dict" not in obj:
            raise CheckpointMismatch(f"{checkpoint} holds no discriminator (trained with --no-gan or LPIPS)")
        sd = obj["disc_state_dict"]
    else:
        sd = obj["state_dict"]
    container = {
        "state_dict": dict(sd),
        "optimizer": None,
        "global_step": int(obj.get("step", 0)),
        "global_epoch": int(obj.get("epoch", 0)),
    }
    if part == "model" and obj.get("kind") in ARCHS:  # a generator
        # the audio/video lead it was trained with; upstream scripts ignore the extra key, `lipsync dub` reads it
        container["mel_lead"] = generator_mel_lead(obj)
    atomic_save(container, out)
    return Path(out)
