"""Kill an agent's ``learn()`` part-way, as a ``kill`` or Ctrl-C would."""

from __future__ import annotations

import pytest


def learn_until_killed(agent, iteration: int, step: str = "_iteration") -> None:
    """Run ``agent.learn()`` and interrupt it as the ``iteration``-th call of its method
    ``step`` starts (``_iteration`` for the online agents, ``loss`` for the offline ones)."""
    original, calls = getattr(agent, step), {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == iteration:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    setattr(agent, step, dies)
    with pytest.raises(KeyboardInterrupt):
        agent.learn()
