"""``arithmetic``: prompts like ``"37+48="``; verifiable reward 1.0 for the exact answer."""

from __future__ import annotations

import numpy as np

from llm_env.tasks.base import Task
from llm_env.tokenizer import train_tokenizer


def _problems(max_operand: int) -> list[tuple[str, str]]:
    return [
        (f"{a}+{b}=", str(a + b)) for a in range(max_operand + 1) for b in range(max_operand + 1)
    ]


def make_arithmetic_task(
    max_operand: int = 99,
    eval_fraction: float = 0.1,
    seed: int = 0,
    num_demonstrations: int | None = None,
) -> Task:
    """All ``a+b=`` problems with ``0 <= a, b <= max_operand``, split into train and eval prompts.

    ``max_operand=9`` gives the single-digit version (100 problems). Demonstrations are the
    training problems with their correct answers — all of them, or the first
    ``num_demonstrations`` of the shuffled training set (few demonstrations leave an SFT policy
    whose pass@1 is well below 1: room for RL from the verifier).
    """
    if isinstance(max_operand, bool) or not isinstance(max_operand, int) or max_operand < 1:
        raise ValueError(f"max_operand must be an integer >= 1, got {max_operand!r}")
    if num_demonstrations is not None and (
        isinstance(num_demonstrations, bool)
        or not isinstance(num_demonstrations, int)
        or num_demonstrations < 1
    ):
        raise ValueError(f"num_demonstrations must be an integer >= 1, got {num_demonstrations!r}")
    problems = _problems(max_operand)
    order = np.random.default_rng(seed).permutation(len(problems))
    n_eval = max(1, int(round(eval_fraction * len(problems))))
    eval_set = [problems[i] for i in order[:n_eval]]
    train_set = [problems[i] for i in order[n_eval:]]
    digits = len(str(2 * max_operand))
    return Task(
        name="arithmetic",
        train_prompts=tuple(p for p, _ in train_set),
        eval_prompts=tuple(p for p, _ in eval_set),
        demonstrations=tuple(train_set[:num_demonstrations]),
        gold_reward="arithmetic",
        max_new_tokens=digits + 1,
        max_prompt_tokens=2 * len(str(max_operand)) + 3,
        make_tokenizer=lambda: train_tokenizer(
            ["0123456789+=", *(p + c for p, c in problems[:50])], vocab_size=32, split_digits=True
        ),
    )
