"""Kill an agent's ``learn()`` part-way, as a ``kill`` or Ctrl-C would."""

from __future__ import annotations

import pytest


def learn_until_killed(agent, step: int) -> None:
    """Run ``agent.learn()`` and interrupt it as its ``step``-th training step starts (every
    agent's loop calls ``_train_step`` once per step)."""
    original, calls = agent._train_step, {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    agent._train_step = dies
    with pytest.raises(KeyboardInterrupt):
        agent.learn()
