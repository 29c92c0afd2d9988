"""``arithmetic_reasoning``: sums like ``"3+7+2+9+4+8="`` in a free format, where a completion
may give the sum directly (``"33"``) or write the steps first
(``"3+7=10;10+2=12;12+9=21;21+4=25;25+8=33"``).

Reasoning is optional: the demonstrations are mostly direct answers (a share
``steps_fraction`` of them step by step), so a policy pre-trained on them rarely writes steps.
Only the outcome is rewarded (the gold reward ``"arithmetic_chain"``): 1.0 iff the text after
the last ``=`` of prompt + completion, whitespace stripped, is exactly the decimal sum of the
terms, else 0.0. So ``"33"`` and a chain of steps ending ``...=33`` both score 1; a wrong sum,
a wrong last step, a trailing separator (``"...=33;"``), a leading zero (``"033"``), an empty or
unfinished completion (``"3+7=10;10+2"``: its last ``=`` is followed by ``"10;10+2"``) score 0.
Wrong intermediate steps are not penalised: only the final number counts.

Whether the steps pay depends on the sizes and the model. Measured on the tiny GPT-2 (2 layers
× 128, SFT from scratch, one sample at temperature 1 on held-out sums): a direct answer is the
easier route for single-digit terms (6 terms: 0.72 direct vs 0.58 step by step, each SFT-ed
600 steps on its own format alone) and for terms up to 19; with two-digit terms (3 terms up to
99, 3,000 SFT steps) the steps win by far (0.95 vs 0.19), but learning two-digit addition from
a 10% share of stepwise demonstrations takes more SFT than a study of minutes can spend. The
defaults are the single-digit chain.
"""

from __future__ import annotations

import numpy as np

from llm_env.tasks.arithmetic_chain import chain_problems, chain_prompt, chain_tokenizer
from llm_env.tasks.base import Task
from reward_models.arithmetic_chain import chain_solution


def writes_steps(completion: str) -> bool:
    """Whether ``completion`` writes working before its answer: it has an ``=`` of its own
    (``"12+7=19;19+30=49"``: True; ``"49"``, ``"12+7"``: False). The answer is then the text
    after its own last ``=``."""
    return "=" in completion


def _check_int(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def make_arithmetic_reasoning_task(
    num_terms: int = 6,
    max_operand: int = 9,
    num_problems: int = 4000,
    steps_fraction: float = 0.1,
    eval_fraction: float = 0.05,
    seed: int = 0,
) -> Task:
    """``num_problems`` sums of ``num_terms`` terms in ``[0, max_operand]``, split into train and
    eval prompts (``eval_fraction``); the demonstrations answer every training problem, a share
    ``steps_fraction`` of them (chosen at random, ``seed``) step by step and the rest directly.

    Prompts, tokenizer (one token per character) and the step format are ``arithmetic_chain``'s;
    ``max_new_tokens`` is the longest step-by-step answer plus EOS, so writing the steps always
    fits.
    """
    for name, value, least in (("num_terms", num_terms, 2), ("max_operand", max_operand, 1),
                               ("num_problems", num_problems, 2)):  # fmt: skip
        _check_int(name, value, least)
    for name, value in (("steps_fraction", steps_fraction), ("eval_fraction", eval_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    problems = chain_problems(num_terms, max_operand, num_problems, seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(problems))
    n_eval = max(1, int(round(eval_fraction * len(problems))))
    eval_set, train_set = order[:n_eval], order[n_eval:]
    stepwise = set(rng.permutation(train_set)[: int(round(steps_fraction * len(train_set)))])

    def answer(i: int) -> str:
        terms = problems[i]
        return chain_solution(terms) if i in stepwise else str(sum(terms))

    demonstrations = tuple((chain_prompt(problems[i]), answer(i)) for i in train_set)
    longest = (max_operand,) * num_terms
    return Task(
        name="arithmetic_reasoning",
        train_prompts=tuple(p for p, _ in demonstrations),
        eval_prompts=tuple(chain_prompt(problems[i]) for i in eval_set),
        demonstrations=demonstrations,
        gold_reward="arithmetic_chain",
        max_new_tokens=len(chain_solution(longest)) + 1,
        max_prompt_tokens=len(chain_prompt(longest)) + 1,  # + the "▁" prefix
        make_tokenizer=lambda: chain_tokenizer(
            [chain_prompt(problems[i]) + chain_solution(problems[i]) for i in order[:50]]
        ),
    )
