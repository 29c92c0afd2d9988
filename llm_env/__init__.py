"""tokenmdp's environment: importing ``llm_env`` registers ``TokenMDP-v0``.

import gymnasium as gym, llm_env
env = gym.make("TokenMDP-v0")                       # sentiment task, VADER reward
venv = gym.make_vec("TokenMDP-v0", num_envs=64, vectorization_mode="vector_entry_point")
"""

from gymnasium.envs.registration import register, registry

from llm_env.models import tiny_gpt2
from llm_env.tasks import TASKS, Task, make_task
from llm_env.token_mdp import TokenMDPEnv
from llm_env.tokenizer import train_tokenizer
from llm_env.vector import TokenMDPVectorEnv

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
