"""``arithmetic_chain``: the gold outcome and step checkers, demonstrations, tokenizer, env."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from llm_env import TokenMDPEnv
from llm_env.tasks import TASKS, make_task
from reward_models import REWARD_MODELS, load_reward_model
from reward_models.arithmetic_chain import chain_terms, steps_correct
from tests.helpers import CHAIN, ids

# prompt, completion: (outcome reward, verdict of each step, process reward = their fraction)
CHAINS = {
    ("12+7+30=", "12+7=19;19+30=49"): (1.0, [True, True], 1.0),
    ("12+7+30=", "12+7=19;19+30=48"): (0.0, [True, False], 0.5),
    ("12+7+30=", "12+7=20;20+30=50"): (0.0, [False, True], 0.5),  # checked locally
    ("12+7+30=", "12+7=19;18+30=48"): (0.0, [True, False], 0.5),  # left ≠ previous result
    ("12+7+30=", "12+30=42;42+7=49"): (1.0, [False, False], 0.0),  # terms out of order
    ("12+7+30=", "7+12=19;19+30=49"): (1.0, [False, True], 0.5),
    ("12+7+30=", "12+7=19;"): (0.0, [True], 1.0),  # a step so far; ";" closes it
    ("12+7+30=", "12+7=19"): (0.0, [True], 1.0),
    ("12+7+30=", "12+7=19;19+30=49;"): (0.0, [True, True], 1.0),  # trailing ";" ≠ a number
    ("12+7+30=", "12+7=19;19+30=49;49+0=49"): (1.0, [True, True, False], 2 / 3),  # no 4th term
    ("12+7+30=", "12+7=19;;19+30=49"): (1.0, [True, False, False], 1 / 3),  # empty step
    ("12+7+30=", "12+7=19;garbage;19+30=49"): (1.0, [True, False, False], 1 / 3),
    ("12+7+30=", "12+7=019;19+30=49"): (1.0, [True, True], 1.0),  # compared as integers
    ("12+7+30=", "12+7=19;19+30=049"): (0.0, [True, True], 1.0),  # the outcome is exact text
    ("12+7+30=", "12+ 7=19"): (0.0, [False], 0.0),
    ("12+7+30=", "49"): (1.0, [False], 0.0),  # a direct answer: right outcome, no valid step
    ("12+7+30=", " 49 "): (1.0, [False], 0.0),
    ("12+7+30=", ""): (0.0, [], 0.0),
    ("12+7+30=", "12+7=19;19+3"): (0.0, [True, False], 0.5),  # truncated mid-step
    ("1+2+3+4=", "1+2=3;3+3=6;6+4=10"): (1.0, [True, True, True], 1.0),
    ("0+0=", "0+0=0"): (1.0, [True], 1.0),
}


@pytest.mark.parametrize("text, expected", CHAINS.items(), ids=[c for _, c in CHAINS])
def test_gold_checkers_on_hand_written_chains(text, expected):
    prompt, completion = text
    outcome, verdicts, fraction = expected
    assert steps_correct(prompt, completion) == verdicts
    assert load_reward_model("arithmetic_chain").score([prompt], [completion]).tolist() == [outcome]
    steps = load_reward_model("arithmetic_chain_steps").score([prompt], [completion])
    assert steps.dtype == np.float32 and steps[0] == pytest.approx(fraction)


def test_checkers_score_a_batch_and_reject_a_malformed_prompt():
    prompts, completions = zip(*CHAINS)
    outcomes = load_reward_model("arithmetic_chain").score(prompts, completions)
    assert outcomes.tolist() == [e[0] for e in CHAINS.values()]
    assert chain_terms(" 3 + 4+5 =") == [3, 4, 5]
    for prompt in ("3=", "3+4", "a+b=", "3-4="):
        message = f"prompt {prompt!r} is not of the form 'a+b+...='"
        with pytest.raises(ValueError, match=re.escape(message)):
            chain_terms(prompt)


@pytest.mark.parametrize("kwargs", [{}, {"num_terms": 3, "max_operand": 9}, {"num_terms": 5}])
def test_demonstrations_all_score_one_and_fit_the_length_limits(kwargs):
    task = make_task("arithmetic_chain", **kwargs)
    prompts, completions = zip(*task.demonstrations)
    assert load_reward_model(task.gold_reward).score(prompts, completions).tolist() == [1.0] * len(
        prompts
    )
    steps = load_reward_model(task.gold_process_reward).score(prompts, completions)
    assert steps.tolist() == [1.0] * len(prompts)
    num_terms = kwargs.get("num_terms", 3)
    assert all(
        p.count("+") == num_terms - 1 and c.count(";") == num_terms - 2
        for p, c in zip(prompts, completions)
    )
    tok = task.tokenizer()

    def n_tokens(text):
        return len(tok(text, add_special_tokens=False)["input_ids"])

    longest = max(n_tokens(p + c) - n_tokens(p) for p, c in task.demonstrations)  # in context
    assert longest == max(map(len, completions)) and longest + 1 <= task.max_new_tokens
    assert max(map(n_tokens, task.prompts("train"))) <= task.max_prompt_tokens
    assert set(task.train_prompts).isdisjoint(task.eval_prompts)


def test_task_size_split_and_determinism():
    task = make_task("arithmetic_chain", num_terms=3, max_operand=9)
    assert (len(task.train_prompts), len(task.eval_prompts)) == (900, 100)  # 2000 > 10**3: all
    small = make_task("arithmetic_chain", num_terms=2, max_operand=3, num_problems=10)
    assert len(small.train_prompts) + len(small.eval_prompts) == 10
    other = make_task("arithmetic_chain", num_terms=2, max_operand=50, num_problems=10, seed=1)
    assert (
        other.train_prompts
        != make_task(
            "arithmetic_chain", num_terms=2, max_operand=50, num_problems=10, seed=2
        ).train_prompts
    )
    assert (task.max_new_tokens, task.max_prompt_tokens) == (len("9+9=18;18+9=27") + 1, 7)
    assert (task.step_separator, task.gold_process_reward) == (";", "arithmetic_chain_steps")


def test_tokenizer_has_one_token_per_symbol(chain_tokenizer):
    text = "12+7+30=12+7=19;19+30=49"
    encoded = chain_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert chain_tokenizer.convert_ids_to_tokens(encoded) == ["▁", *text]
    assert chain_tokenizer.decode(encoded) == text
    assert (
        len(chain_tokenizer) == 17 and chain_tokenizer.pad_token_id != chain_tokenizer.eos_token_id
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_terms": 1}, "num_terms must be an integer >= 2, got 1"),
        ({"num_terms": True}, "num_terms must be an integer >= 2, got True"),
        ({"max_operand": 0}, "max_operand must be an integer >= 1, got 0"),
        ({"num_problems": 2.5}, "num_problems must be an integer >= 2, got 2.5"),
    ],
)
def test_bad_task_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_task("arithmetic_chain", **kwargs)


def test_registered_task_and_reward_models():
    assert "arithmetic_chain" in TASKS
    assert {"arithmetic_chain", "arithmetic_chain_steps"} <= set(REWARD_MODELS)


def test_check_env_passes_for_the_task():
    env = gym.make("TokenMDP-v0", **CHAIN)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(gym.make("TokenMDP-v0", **CHAIN).unwrapped, warn=False)
    gym_check_env(
        gym.make("TokenMDP-v0", task="arithmetic_chain").unwrapped, skip_render_check=True
    )


def test_a_demonstration_played_through_the_env(chain_task, chain_tokenizer):
    env = TokenMDPEnv(**CHAIN, process_reward_model="task")
    prompt, completion = chain_task.demonstrations[0]
    env.reset(options={"prompt": prompt})
    steps = [env.step(t) for t in ids(chain_tokenizer, completion + "$")]
    *_, terminated, truncated, final = steps[-1]
    closing = [k for k, s in enumerate(steps) if s[4]["process_reward"]]
    assert closing == [completion.index(";"), len(completion)] and terminated
    assert final["gold_reward"] == 1.0 and final["completion"] == completion
    assert [s[1] for s in steps] == [0.0] * completion.index(";") + [1.0] + [0.0] * (
        len(completion) - completion.index(";") - 1
    ) + [2.0]  # process 1.0 on ";" and on EOS, plus the outcome 1.0 on EOS
