"""Gold checkers of the ``arithmetic_chain`` task: prompts ``"12+7+30="``, completions written
step by step, ``"12+7=19;19+30=49"``.

- Outcome (``"arithmetic_chain"``): 1.0 iff the text after the last ``=`` of prompt + completion
  is exactly (whitespace stripped) the decimal sum of the terms, else 0.0. A direct answer
  (``"49"``) counts; a trailing separator (``"...=49;"``) does not.
- Process (``"arithmetic_chain_steps"``): the FRACTION of the steps so far that are correct (0.0
  when there is none). The steps are the completion split on ``";"``; a trailing empty piece
  (the completion ends with ``";"``) is not a step, any other empty piece is a wrong one. Step k
  (from 1) ``"a+b=c"`` (non-negative integers, no spaces inside) is correct iff ``a`` equals the
  previous step's written result ``c`` (for step 1: the first term), ``b`` equals term k+1 and
  ``c = a + b`` (a garbled step has no result, so the step after it is wrong too; a step past
  the last term is wrong). Each step is checked locally, against the previous written result,
  so an error is charged to the step that makes it; a chain whose steps are all correct ends on
  the true sum. A fraction rather than a product gives partial credit to a chain with one slip
  (a product would be 0 from the first error on).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

SEPARATOR = ";"
_PROMPT = re.compile(r"^\s*(\d+(?:\s*\+\s*\d+)+)\s*=\s*$")
_STEP = re.compile(r"^\s*(\d+)\+(\d+)=(\d+)\s*$")


def chain_terms(prompt: str) -> list[int]:
    """The terms of a prompt like ``"12+7+30="`` (at least two)."""
    match = _PROMPT.match(prompt)
    if match is None:
        raise ValueError(
            f"arithmetic_chain reward: prompt {prompt!r} is not of the form 'a+b+...='"
        )
    return [int(t) for t in match.group(1).split("+")]


def chain_solution(terms: Sequence[int]) -> str:
    """The step-by-step completion: ``[12, 7, 30] -> "12+7=19;19+30=49"``."""
    steps, total = [], terms[0]
    for term in terms[1:]:
        steps.append(f"{total}+{term}={total + term}")
        total += term
    return SEPARATOR.join(steps)


def final_answer_correct(prompt: str, completion: str) -> bool:
    """The text after the last ``=`` of prompt + completion is the sum of the terms."""
    answer = (prompt + completion).rsplit("=", 1)[1].strip()
    return answer == str(sum(chain_terms(prompt)))


def split_steps(completion: str) -> list[str]:
    """The steps so far: ``completion`` split on ``";"``, without a trailing empty piece."""
    pieces = completion.split(SEPARATOR)
    return pieces[:-1] if pieces[-1] == "" else pieces


def steps_correct(prompt: str, completion: str) -> list[bool]:
    """Whether each step so far is correct (module docstring: checked locally)."""
    terms = chain_terms(prompt)
    previous: int | None = terms[0]
    verdicts = []
    for k, step in enumerate(split_steps(completion), start=1):
        match = _STEP.match(step)
        if match is None:
            verdicts.append(False)
            previous = None
            continue
        a, b, c = map(int, match.groups())
        verdicts.append(k < len(terms) and a == previous and b == terms[k] and c == a + b)
        previous = c
    return verdicts


class ArithmeticChainRewardModel:
    """Outcome: 1.0 iff the final number after the last ``=`` is the sum of the terms."""

    name = "arithmetic_chain"

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return np.array(
            [float(final_answer_correct(p, c)) for p, c in zip(prompts, completions)],
            dtype=np.float32,
        )


class ArithmeticChainStepsRewardModel:
    """Process: the fraction of the steps so far that are correct (0.0 with no step)."""

    name = "arithmetic_chain_steps"

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        fractions = []
        for prompt, completion in zip(prompts, completions):
            verdicts = steps_correct(prompt, completion)
            fractions.append(sum(verdicts) / len(verdicts) if verdicts else 0.0)
        return np.array(fractions, dtype=np.float32)
