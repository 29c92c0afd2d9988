"""Kill an online agent's ``learn()`` part-way, as a ``kill`` or Ctrl-C would."""

from __future__ import annotations

import pytest


def learn_until_killed(agent, iteration: int) -> None:
    """Run ``agent.learn()`` and interrupt it as its ``iteration``-th iteration starts."""
    original, calls = agent._iteration, {"n": 0}

    def dies():
        calls["n"] += 1
        if calls["n"] == iteration:
            raise KeyboardInterrupt
        return original()

    agent._iteration = dies
    with pytest.raises(KeyboardInterrupt):
        agent.learn()
