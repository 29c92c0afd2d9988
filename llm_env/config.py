"""``EnvConfig``: the env's options as one validated dataclass.

Both envs take one (``TokenMDPEnv(config)``, ``TokenMDPVectorEnv(num_envs, config)``) or the
same options as keywords (``gym.make("TokenMDP-v0", task="arithmetic", max_new_tokens=8)``);
the online agents, the data producers and the studies take one (or a dict of its fields,
``EnvConfig.of``), and ``scripts.flags`` turns its fields into the command line's env options,
as it does the agent configs. ``__post_init__`` checks each option's shape and names the bad
one; what needs loading (the task, the tokenizer, the reward models) is checked by ``setup()``.
From Python, ``task``, ``tokenizer`` and the reward models may also be objects (a ``Task``, a
tokenizer, a scorer or a TRL-style reward function); the command line gives names and paths.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from llm_env.process import PROCESS_REWARD_MODES
from llm_env.tasks import DEFAULT_TASK

SPLITS = Literal["train", "eval"]


def check_positive_int(name: str, value) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an integer >= 1 (a bool is not)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"{name} must be a positive integer (>= 1), got {value!r} ({type(value).__name__})"
        )


@dataclasses.dataclass
class EnvConfig:
    """Options of ``TokenMDP-v0`` (one sequence or a vector of them)."""

    task: str = DEFAULT_TASK
    """Built-in task or 'jsonl' (from Python also a Task)."""
    task_kwargs: dict = dataclasses.field(default_factory=dict)
    """Task options as a JSON object, e.g. {"max_operand": 9} or {"path": "prompts.jsonl"}."""
    tokenizer: str | None = None
    """Tokenizer directory (default: the task's; the agents pass their policy's)."""
    reward_model: str | None = None
    """Reward spec: a registered name, a Bradley-Terry directory, 'file.py:callable' or
    'package.module:callable' (default: the task's gold reward)."""
    gold_reward_model: str | None = "task"
    """Extra score reported in info['gold_reward'] ('task': the task's gold reward; none: no
    gold score)."""
    max_new_tokens: int | None = None
    """Completion length limit (default: the task's)."""
    max_prompt_tokens: int | None = None
    """Prompt length (longer prompts keep their end; default: the task's)."""
    vocab_size: int | None = None
    """Size of the action space (default: the tokenizer's length; never smaller)."""
    split: SPLITS = "train"
    """Which of the task's prompts reset draws from."""
    process_reward_model: str | None = None
    """Dense rewards: a scorer of the steps so far ('task' = the task's gold step checker, a
    PRM directory, 'implicit:POLICY_DIR,REF_DIR,BETA', 'file.py:callable'), paid on each step's
    closing token."""
    step_boundary: str | None = None
    """The string that closes a step (default: the task's separator); needs
    process_reward_model."""
    process_reward_mode: Literal["step", "shaping"] = "step"
    """'step': each step's score on its closing token; 'shaping': potential-based, the
    difference of successive scores."""
    stop_tokens: tuple[str, ...] = ()
    """Token strings (or, from Python, ids) that end an episode besides the tokenizer's EOS and
    generation_config.eos_token_id."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end an episode (as stop_tokens)."""
    chat_template_kwargs: dict = dataclasses.field(default_factory=dict)
    """Options of the chat template for conversational prompts, e.g. {"enable_thinking": false}."""

    def __post_init__(self) -> None:
        for name, example in (("task_kwargs", "task options (e.g. {'max_operand': 9})"),
                              ("chat_template_kwargs", "options (e.g. {'enable_thinking': False})")):  # fmt: skip
            value = getattr(self, name)
            if value is None:
                setattr(self, name, {})
            elif not isinstance(value, Mapping):
                raise TypeError(f"{name} must be a dict of {example}, got "
                                f"{type(value).__name__} {value!r}")  # fmt: skip
        for name in ("max_new_tokens", "max_prompt_tokens", "vocab_size"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        for name in ("stop_tokens", "stop_token_ids"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, ())
            elif isinstance(value, (str, bytes, int)) or not hasattr(value, "__iter__"):
                raise TypeError(f"{name} must be a list, got {value!r}")
            else:
                setattr(self, name, tuple(value))
        if self.split not in typing.get_args(SPLITS):
            raise ValueError(f"split must be 'train' or 'eval', got {self.split!r}")
        if self.process_reward_mode not in PROCESS_REWARD_MODES:
            raise ValueError(f"unknown process_reward_mode {self.process_reward_mode!r}; use one "
                             f"of {list(PROCESS_REWARD_MODES)}")  # fmt: skip
        if self.process_reward_model is None and (
            self.step_boundary is not None or self.process_reward_mode != "step"
        ):
            raise ValueError(
                f"step_boundary={self.step_boundary!r} / process_reward_mode="
                f"{self.process_reward_mode!r} given without process_reward_model: pass one (or "
                "drop them)"
            )

    @classmethod
    def of(cls, options: EnvConfig | Mapping[str, Any] | None = None, **changes: Any) -> EnvConfig:
        """``options`` (a config, a dict of its fields, or None for the defaults) with
        ``changes`` applied; an unknown option is an error listing the known ones."""
        if isinstance(options, EnvConfig):
            values = {f.name: getattr(options, f.name) for f in dataclasses.fields(cls)}
        else:
            values = dict(options or {})
        values.update(changes)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"unknown env option {', '.join(map(repr, unknown))}; the options "
                            f"are {', '.join(sorted(known))}")  # fmt: skip
        return cls(**values)

    def setup(self):
        """The resolved ``EnvSetup`` (task, tokenizer, reward models, lengths, stop ids)."""
        from llm_env.core import resolve_setup

        return resolve_setup(self)
