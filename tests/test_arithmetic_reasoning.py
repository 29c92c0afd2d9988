"""``arithmetic_reasoning``: the outcome verifier on hand-written free-format completions,
``writes_steps``, the demonstrations' mix of direct and stepwise answers, the env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from llm_env import TokenMDPEnv
from llm_env.tasks import TASKS, make_task
from llm_env.tasks.arithmetic_reasoning import writes_steps
from reward_models import load_reward_model
from tests.helpers import ids

SMALL = {"num_terms": 3, "max_operand": 99, "num_problems": 200}
REASONING = {"task": "arithmetic_reasoning", "task_kwargs": SMALL}

# completion of "12+7+30=": (reward, writes steps)
COMPLETIONS = {
    "49": (1.0, False),  # direct, right
    " 49 ": (1.0, False),  # whitespace around the answer is stripped
    "48": (0.0, False),  # direct, wrong
    "12+7=19;19+30=49": (1.0, True),  # steps, right
    "12+7=19;19+30=48": (0.0, True),  # steps, wrong last step
    "12+7=20;20+30=49": (1.0, True),  # a wrong step, yet the final number is right
    "12+7=19;19+30=50": (0.0, True),
    "12+37=49": (1.0, True),  # any working: only the number after the last "=" counts
    "12+7=19;19+30=49;": (0.0, True),  # malformed: a trailing separator
    "12+7=19;19+3": (0.0, True),  # malformed: unfinished (after the last "=": "19;19+3")
    "12+7": (0.0, False),  # malformed: no "=" of its own, the answer reads "12+7"
    "049": (0.0, False),  # the answer is exact text: no leading zero
    "4 9": (0.0, False),
    "": (0.0, False),  # empty
    "=49": (1.0, True),
}


@pytest.mark.parametrize("completion, expected", COMPLETIONS.items(), ids=list(COMPLETIONS))
def test_outcome_verifier_and_writes_steps_on_hand_written_completions(completion, expected):
    reward, steps = expected
    task = make_task("arithmetic_reasoning", **SMALL)
    score = load_reward_model(task.gold_reward).score(["12+7+30="], [completion])
    assert score.dtype == np.float32 and score.tolist() == [reward]
    assert writes_steps(completion) is steps


def test_demonstrations_mix_direct_and_stepwise_answers_all_right():
    task = make_task("arithmetic_reasoning", **SMALL, steps_fraction=0.25)
    prompts, completions = zip(*task.demonstrations)
    assert load_reward_model(task.gold_reward).score(prompts, completions).tolist() == [1.0] * len(
        prompts
    )
    stepwise = [writes_steps(c) for c in completions]
    assert sum(stepwise) == round(0.25 * len(task.train_prompts))  # exactly the share
    assert all(c.count(";") == 1 for c, s in zip(completions, stepwise) if s)
    assert all(c.isdigit() for c, s in zip(completions, stepwise) if not s)
    assert task.train_prompts == prompts and set(prompts).isdisjoint(task.eval_prompts)
    assert (len(task.train_prompts), len(task.eval_prompts)) == (190, 10)
    assert task.max_new_tokens == len("99+99=198;198+99=297") + 1
    for fraction, share in ((0.0, 0), (1.0, len(prompts))):
        every = make_task("arithmetic_reasoning", **SMALL, steps_fraction=fraction)
        assert sum(writes_steps(c) for _, c in every.demonstrations) == share
        assert every.train_prompts == task.train_prompts  # the split does not depend on the mix


def test_default_task_is_mostly_direct_and_deterministic():
    task = make_task("arithmetic_reasoning")
    share = np.mean([writes_steps(c) for _, c in task.demonstrations])
    assert share == pytest.approx(0.1, abs=0.001)
    again = TASKS["arithmetic_reasoning"]()  # a fresh build, not the cached one
    assert again.demonstrations == task.demonstrations and again.eval_prompts == task.eval_prompts
    tok = task.tokenizer()
    longest = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in task.eval_prompts)
    assert longest <= task.max_prompt_tokens


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_terms": 1}, "num_terms must be an integer >= 2, got 1"),
        ({"max_operand": 0}, "max_operand must be an integer >= 1, got 0"),
        ({"num_problems": True}, "num_problems must be an integer >= 2, got True"),
        ({"steps_fraction": 1.5}, r"steps_fraction must be a number in \[0, 1\], got 1.5"),
        ({"eval_fraction": "0.1"}, r"eval_fraction must be a number in \[0, 1\], got '0.1'"),
    ],
)
def test_bad_task_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_task("arithmetic_reasoning", **kwargs)


def test_check_env_passes_for_the_task():
    check_env(gym.make("TokenMDP-v0", **REASONING).unwrapped, skip_render_check=True)
    check_env(gym.make("TokenMDP-v0", task="arithmetic_reasoning").unwrapped,
              skip_render_check=True)  # fmt: skip


@pytest.mark.parametrize("completion, reward", [("49", 1.0), ("12+7=19;19+30=49", 1.0),
                                                ("12+7=19;19+30=48", 0.0)])  # fmt: skip
def test_completions_played_through_the_env_are_paid_at_eos(completion, reward):
    env = TokenMDPEnv(**REASONING)
    env.reset(options={"prompt": "12+7+30="})
    steps = [env.step(t) for t in ids(env.tokenizer, completion + "$")]
    assert [s[1] for s in steps[:-1]] == [0.0] * len(completion)
    _, final_reward, terminated, truncated, info = steps[-1]
    assert (final_reward, terminated, truncated) == (reward, True, False)
    assert (info["completion"], info["finish_reason"]) == (completion, "eos")
