"""Env arguments are checked at construction; the error names the argument, value and range."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import llm_env
from llm_env import TokenMDPEnv, TokenMDPVectorEnv

ARITH = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}}


def positive_int_error(name: str, value) -> str:
    return (
        f"{name} must be a positive integer \\(>= 1\\), got {value!r} \\({type(value).__name__}\\)"
    )


@pytest.mark.parametrize("value", [True, False, 0, -3, 2.0, "4", np.bool_(True)])
@pytest.mark.parametrize("name", ["max_new_tokens", "max_prompt_tokens", "vocab_size"])
def test_length_limits_and_vocab_size_must_be_positive_ints(name, value):
    with pytest.raises(ValueError, match=positive_int_error(name, value)):
        TokenMDPEnv(**ARITH, **{name: value})
    with pytest.raises(ValueError, match=positive_int_error(name, value)):
        TokenMDPVectorEnv(2, **ARITH, **{name: value})


@pytest.mark.parametrize("value", [True, False, 0, -1, 2.0, "2", None])
def test_num_envs_must_be_a_positive_int(value):
    with pytest.raises(ValueError, match=positive_int_error("num_envs", value)):
        TokenMDPVectorEnv(value, **ARITH)
    with pytest.raises(ValueError, match=positive_int_error("num_envs", value)):
        gym.make_vec(llm_env.ENV_ID, num_envs=value, **ARITH)


def test_numpy_integers_are_fine():
    venv = TokenMDPVectorEnv(np.int64(2), **ARITH, max_new_tokens=np.int32(3))
    assert venv.num_envs == 2 and venv.setup.max_new_tokens == 3


@pytest.mark.parametrize("value", [["max_operand", 9], "max_operand=9", (("max_operand", 9),)])
def test_task_kwargs_must_be_a_dict(value):
    message = f"task_kwargs must be a dict of task options .* got {type(value).__name__}"
    with pytest.raises(TypeError, match=message):
        TokenMDPEnv(task="arithmetic", task_kwargs=value)
    with pytest.raises(TypeError, match=message):
        TokenMDPVectorEnv(2, task="arithmetic", task_kwargs=value)


@pytest.mark.parametrize("mode", [3, None, "never"])
def test_autoreset_mode_must_be_a_mode(mode):
    with pytest.raises(ValueError, match=f"unknown autoreset_mode {mode!r}"):
        TokenMDPVectorEnv(2, **ARITH, autoreset_mode=mode)
