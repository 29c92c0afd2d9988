"""An enumerable toy token MDP: one prompt ``"a"``, completions of 1–2 tokens over an 8-token
vocabulary, known rewards. Small enough to enumerate every completion, so the KL-regularised
optimum π* = π_ref·exp(r/β)/Z, exact KLs and exact gradients are computable: the tests and
``tokenmdp kl-study`` check agents against them. Not registered as a named task (build it with
``toy_task``)."""

from __future__ import annotations

import itertools

from llm_env.tasks.base import Task
from llm_env.tokenizer import train_tokenizer
from reward_models.base import FunctionRewardModel

PROMPT = "a"
TOY_REWARDS = {"b": 1.0, "c": 0.5, "bd": 1.5, "cc": 1.0}


def toy_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """``TOY_REWARDS`` of each completion, 0 for any other."""
    return [TOY_REWARDS.get(c, 0.0) for c in completions]


def toy_task(max_new_tokens: int) -> Task:
    """The toy task with completions of up to ``max_new_tokens`` (1 or 2) tokens."""
    tokenizer = train_tokenizer(["abcd"], vocab_size=8)
    return Task(
        name="toy",
        train_prompts=(PROMPT,),
        eval_prompts=(PROMPT,),
        demonstrations=(),
        gold_reward=None,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=4,
        make_tokenizer=lambda: tokenizer,
    )


def toy_env_kwargs(task: Task) -> dict:
    """Env arguments: the toy task and its reward."""
    return {"task": task, "reward_model": FunctionRewardModel(toy_reward, "toy")}


def completions(vocab: int, eos: int, max_new_tokens: int) -> list[tuple[int, ...]]:
    """Every token sequence the MDP can produce (EOS ends a sequence early)."""
    if max_new_tokens == 1:
        return [(t,) for t in range(vocab)]
    return [(eos,)] + [(a, b) for a, b in itertools.product(range(vocab), repeat=2) if a != eos]
