"""``arithmetic_chain``: prompts like ``"12+7+30="``, answered step by step, ``"12+7=19;19+30=49"``.

A multi-step task with verifiable steps: the gold outcome reward (``"arithmetic_chain"``) checks
the final number, the gold process reward (``"arithmetic_chain_steps"``) each step so far — what
a process reward model would be graded against. Steps are separated by ``";"``, the task's
default ``step_boundary``.
"""

from __future__ import annotations

import itertools

import numpy as np
from transformers import PreTrainedTokenizerFast

from llm_env.tasks.base import Task
from llm_env.tokenizer import train_tokenizer
from reward_models.arithmetic_chain import SEPARATOR, chain_solution


def chain_problems(
    num_terms: int, max_operand: int, num_problems: int, seed: int
) -> list[tuple[int, ...]]:
    """``num_problems`` distinct term tuples in ``[0, max_operand]`` (all of them if fewer)."""
    if (max_operand + 1) ** num_terms <= num_problems:
        return list(itertools.product(range(max_operand + 1), repeat=num_terms))
    rng = np.random.default_rng(seed)
    chosen: dict[tuple, None] = {}
    while len(chosen) < num_problems:
        chosen[tuple(int(t) for t in rng.integers(0, max_operand + 1, size=num_terms))] = None
    return list(chosen)


def chain_prompt(terms: tuple[int, ...]) -> str:
    """``(12, 7, 30) -> "12+7+30="``."""
    return "+".join(map(str, terms)) + "="


def chain_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """The chains' tokenizer: BPE (digits split) trained on ``texts`` and a seed text where every
    symbol sits between digits, so it learns no merge: each of ``0-9 + = ;`` is one token."""
    return train_tokenizer(["0+1=2;3+4=5;6+7=8;9", *texts], vocab_size=32, split_digits=True)


def _longest_completion(num_terms: int, max_operand: int) -> int:
    """Characters of the longest step-by-step answer (every operand at ``max_operand``)."""
    return len(chain_solution([max_operand] * num_terms))


def make_arithmetic_chain_task(
    num_terms: int = 3,
    max_operand: int = 99,
    num_problems: int = 2000,
    eval_fraction: float = 0.1,
    seed: int = 0,
) -> Task:
    """``num_problems`` sums of ``num_terms`` terms in ``[0, max_operand]``, split into train and
    eval prompts; demonstrations are the training problems solved step by step.

    The tokenizer (``chain_tokenizer``) makes each of ``0-9 + = ;`` one token (``";"`` closes
    a step on its own token), so ``max_new_tokens`` is the longest answer, in characters, plus
    EOS.
    """
    for name, value, least in (
        ("num_terms", num_terms, 2),  # a chain has at least one step
        ("max_operand", max_operand, 1),
        ("num_problems", num_problems, 2),  # one train and one eval prompt
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    problems = chain_problems(num_terms, max_operand, num_problems, seed)
    order = np.random.default_rng(seed).permutation(len(problems))
    n_eval = max(1, int(round(eval_fraction * len(problems))))
    pairs = [(chain_prompt(problems[i]), chain_solution(problems[i])) for i in order]
    eval_set, train_set = pairs[:n_eval], pairs[n_eval:]
    return Task(
        name="arithmetic_chain",
        train_prompts=tuple(p for p, _ in train_set),
        eval_prompts=tuple(p for p, _ in eval_set),
        demonstrations=tuple(train_set),
        gold_reward="arithmetic_chain",
        max_new_tokens=_longest_completion(num_terms, max_operand) + 1,
        max_prompt_tokens=len(chain_prompt((max_operand,) * num_terms)) + 1,  # + the "▁" prefix
        make_tokenizer=lambda: chain_tokenizer([p + c for p, c in pairs[:50]]),
        step_separator=SEPARATOR,
        gold_process_reward="arithmetic_chain_steps",
    )
