"""The settings the agents were tuned with for the tiny GPT-2s trained from scratch here.

The agents' own defaults suit a pretrained checkpoint (learning rates of TRL's order: 1e-6 to
1e-4); the built-in tasks train 2-layer GPT-2s from scratch, which need learning rates 10-1000x
higher. ``TINY_MODEL_OPTIONS`` holds, per agent name, the old values of every default that
changed, as flat options (``"optim.learning_rate"``) that ``agents.harness.config.build_config``
takes. Every place that trains a tiny model applies it: the pipeline, the process study, the
fluency judge of ``tokenmdp evaluate``, ``pretrain_on_task``, the online CLIs without ``--policy``
and ``tokenmdp sft --task``; their results are those of the old defaults, bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from agents.harness.config import build_config

C = TypeVar("C")

TINY_MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "sft": {"optim.learning_rate": 2e-3, "optim.fused_adamw": False},
    "reward_model": {"optim.learning_rate": 5e-4, "optim.fused_adamw": False},
    "prm": {"optim.learning_rate": 5e-4, "optim.fused_adamw": False},
    "dpo": {
        "optim.learning_rate": 3e-4,
        "optim.fused_adamw": False,
        "share_prompts": False,
    },
    "ppo": {
        "optim.learning_rate": 3e-4,
        "optim.fused_adamw": False,
        "sampling.share_prompts": False,
    },
    "reinforce": {
        "optim.learning_rate": 3e-4,
        "optim.fused_adamw": False,
        "sampling.share_prompts": False,
    },
    "grpo": {
        "optim.learning_rate": 1e-4,
        "optim.fused_adamw": False,
        "sampling.share_prompts": False,
    },
    "online_dpo": {
        "optim.learning_rate": 3e-4,
        "optim.fused_adamw": False,
        "sampling.share_prompts": False,
    },
}


def tiny_model_config(agent: str, cls: type[C], **fields: Any) -> C:
    """``cls(**fields)`` (``agent``'s config class) with the tiny-model settings in place of the
    defaults; a group given whole (``optim=OptimConfig(...)``) replaces the preset's for it."""
    preset = {
        key: value
        for key, value in TINY_MODEL_OPTIONS[agent].items()
        if key.split(".", 1)[0] not in fields
    }
    return dataclasses.replace(build_config(cls, preset), **fields)
