"""Our entry points never reach the network: every Hugging Face library is put in offline mode.

Models, tokenizers and data load from local directories only. ``transformers``, ``datasets``
and ``huggingface_hub`` read their offline switches from the environment when first imported,
and TRL's trainers send usage telemetry from a background thread unless the hub is offline.
``stay_offline()`` sets the switches (for libraries not imported yet and for child processes)
and, where ``huggingface_hub`` is already imported, its module constants, which it reads on
every call. ``import scripts`` applies it, so every command and benchmark runs offline.
"""

from __future__ import annotations

import os
import sys

SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
            "HF_HUB_DISABLE_TELEMETRY")  # fmt: skip


def stay_offline() -> None:
    for name in SWITCHES:
        os.environ[name] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
        constants.HF_HUB_DISABLE_TELEMETRY = True
