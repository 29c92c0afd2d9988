"""Reward models: anything that scores (prompt, completion) text. See ``reward_models.base``."""

from reward_models.base import (
    REWARD_MODELS,
    FunctionRewardModel,
    RewardModel,
    RewardModelError,
    checked_score,
    load_reward_model,
    register_reward_model,
)

__all__ = [
    "REWARD_MODELS",
    "FunctionRewardModel",
    "RewardModel",
    "RewardModelError",
    "checked_score",
    "load_reward_model",
    "register_reward_model",
]
