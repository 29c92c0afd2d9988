"""tokenmdp's environment: importing ``llm_env`` registers ``TokenMDP-v0``.

import gymnasium as gym, llm_env
env = gym.make("TokenMDP-v0")                       # sentiment task, VADER reward
venv = gym.make_vec("TokenMDP-v0", num_envs=64, vectorization_mode="vector_entry_point")
"""

import importlib

from gymnasium.envs.registration import register, registry

# What ``llm_env`` re-exports, imported on first use (PEP 562): importing a light module such
# as ``llm_env.tokenizer`` or ``llm_env.chat`` (the reward models do) runs no env code.
_EXPORTS = {
    "tiny_gpt2": "llm_env.models",
    "TASKS": "llm_env.tasks",
    "Task": "llm_env.tasks",
    "make_task": "llm_env.tasks",
    "TokenMDPEnv": "llm_env.token_mdp",
    "TokenMDPVectorEnv": "llm_env.vector",
    "train_tokenizer": "llm_env.tokenizer",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llm_env' has no attribute {name!r}")


ENV_ID = "TokenMDP-v0"

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="llm_env.token_mdp:TokenMDPEnv",
        vector_entry_point="llm_env.vector:TokenMDPVectorEnv",
    )

__all__ = [
    "ENV_ID",
    "TASKS",
    "Task",
    "TokenMDPEnv",
    "TokenMDPVectorEnv",
    "make_task",
    "tiny_gpt2",
    "train_tokenizer",
]
