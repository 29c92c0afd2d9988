"""Held-out evaluation while a study's RL runs train: the SFT reference with a lockstep env on
the task's held-out prompts (``HeldoutSet``, which a study's evaluator extends with what it
measures), and the callback that evaluates the agent's policy every few iterations
(``EvalPoints``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stable_baselines3.common.callbacks import BaseCallback

from agents.models.policy import load_policy


class HeldoutSet:
    """The SFT policy (``ref``, in eval mode), a lockstep env of ``num_envs`` sequences on the
    task's held-out split (``env``) and its held-out prompts, each ``repeats`` times in a row
    (``prompts``)."""

    def __init__(self, sft_dir: Path, repeats: int, env_kwargs: dict, num_envs: int = 50):
        from llm_env.vector import TokenMDPVectorEnv

        self.ref, tokenizer = load_policy(sft_dir)
        self.ref.eval()
        self.env = TokenMDPVectorEnv(
            num_envs=num_envs, autoreset_mode="disabled", tokenizer=tokenizer, split="eval",
            **env_kwargs,
        )  # fmt: skip
        self.prompts = [p for p in self.env.setup.task.eval_prompts for _ in range(repeats)]


class EvalPoints(BaseCallback):
    """Evaluates the agent's policy every ``every`` iterations and at the end; x = completions
    trained on (prompts consumed × ``per_prompt`` samples of each). ``evaluator``: policy →
    the point's measurements."""

    def __init__(self, evaluator: Callable[..., dict], every: int, per_prompt: int = 1):
        super().__init__()
        self.evaluator, self.every, self.per_prompt, self.points = evaluator, every, per_prompt, []

    def _record(self) -> None:
        x = int(self.model.num_timesteps) * self.per_prompt
        if not self.points or self.points[-1]["completions"] != x:
            self.points.append({"completions": x, **self.evaluator(self.model.policy)})

    def _on_step(self) -> bool:
        if self.n_calls % self.every == 0:
            self._record()
        return True

    def _on_training_end(self) -> None:
        self._record()
