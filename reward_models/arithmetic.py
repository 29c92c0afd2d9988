"""Verifiable rewards computed from the text: exact-match arithmetic, and completion length."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_PROBLEM = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def solve(prompt: str) -> int:
    """The answer to a prompt like ``"37+48="`` (also ``-`` and ``*``)."""
    match = _PROBLEM.match(prompt)
    if match is None:
        raise ValueError(f"arithmetic reward: prompt {prompt!r} is not of the form 'a+b='")
    a, op, b = match.groups()
    return _OPS[op](int(a), int(b))


class ArithmeticRewardModel:
    """1.0 when the completion (whitespace stripped) is exactly the answer, else 0.0."""

    name = "arithmetic"

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return np.array(
            [float(c.strip() == str(solve(p))) for p, c in zip(prompts, completions)],
            dtype=np.float32,
        )


class LengthRewardModel:
    """Number of whitespace-separated words in the completion: a simple, known reward for tests."""

    name = "length"

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return np.array([len(c.split()) for c in completions], dtype=np.float32)
