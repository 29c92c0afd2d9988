"""Training hooks: every agent's ``learn(callback=...)`` takes Stable-Baselines3 callbacks.

No callback protocol of our own: ``callback`` is what ``BaseAlgorithm.learn`` accepts — ``None``,
a ``BaseCallback`` (``CheckpointCallback``, ``EveryNTimesteps``, your subclass...), a list of
them, or a function ``f(locals, globals) -> bool``. The agent plays SB3's model:

- ``num_timesteps``: the run's x-axis — prompts consumed (PPO, REINFORCE) or examples / pairs
  consumed (SFT, DPO, reward model);
- ``get_env()``: the rollout ``TokenMDPVectorEnv`` of an online agent (``None`` offline);
- ``logger``: the run's ``RunLogger``; ``logger.record(key, value)`` lands in the run's
  TensorBoard events at the next log point;
- ``save(path)``: what ``CheckpointCallback`` calls.

One callback *step* is one iteration (online: a rollout batch and its update) or one optimiser
step (offline). ``on_step()`` returning ``False`` stops training after that step, as in SB3;
the final checkpoint and model are still written. ``callback.locals`` holds the step's
``stats`` (what the agent's ``_train_step`` returned). With several processes the callback runs
on every process (writes through ``agent.save`` happen on the main one) and a stop anywhere stops
every process.
"""

from __future__ import annotations

from typing import Any

from agents.harness.distributed import Distributed
from agents.harness.logging import RunLogger


class CallbackRunner:
    """Drives an SB3 callback from one of our training loops (a no-op for ``callback=None``)."""

    def __init__(self, callback: Any, agent: Any, dist: Distributed, logger: RunLogger):
        self.agent = agent
        if agent is not None:
            agent.logger = logger
        self.dist = dist
        self.callback = None
        if callback is not None:
            from stable_baselines3.common.callbacks import (
                BaseCallback,
                CallbackList,
                ConvertCallback,
            )

            if isinstance(callback, list):
                callback = CallbackList(callback)
            if not isinstance(callback, BaseCallback):
                if not callable(callback):
                    raise TypeError(
                        "callback must be a stable_baselines3 BaseCallback, a list of them or a "
                        f"function(locals, globals) -> bool; got {type(callback).__name__}"
                    )
                callback = ConvertCallback(callback)
            if agent is None:
                raise ValueError("a callback needs the agent it is called for (agent=...)")
            callback.init_callback(agent)
            self.callback = callback

    def start(self, timesteps: int, locals_: dict[str, Any]) -> None:
        if self.agent is not None:
            self.agent.num_timesteps = int(timesteps)
        if self.callback is not None:
            self.callback.on_training_start(locals_, globals())
            self.callback.on_rollout_start()

    def step(self, timesteps: int, locals_: dict[str, Any]) -> bool:
        """After one iteration / optimiser step: ``False`` if training must stop (anywhere)."""
        if self.agent is not None:
            self.agent.num_timesteps = int(timesteps)
        if self.callback is None:
            return True
        self.callback.on_rollout_end()
        self.callback.update_locals(locals_)
        keep_going = bool(self.callback.on_step())
        stop = self.dist.any(not keep_going)
        if not stop:
            self.callback.on_rollout_start()
        return not stop

    def end(self) -> None:
        if self.callback is not None:
            self.callback.on_training_end()
