"""A classic RL baseline on TokenMDP-v0: Stable-Baselines3's PPO (``MultiInputPolicy``, an MLP on
the raw token-id observation) trained directly on the registered environment.

The default task is "say X": on single-digit arithmetic prompts the reward is 1.0 for the
completion ``--target`` followed by EOS, 0.5 for a completion that starts with it, else 0 — a
task an MLP policy can learn in a few thousand steps. ``--reward arithmetic`` trains on the
real exact-match reward instead. Episode statistics are written with the shared tags
(``reward/train``, ``reward/gold``, ``episode/length``; x = episodes, i.e. prompts consumed) by
an SB3 ``BaseCallback``, so the baseline overlays the LM agents in TensorBoard.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

import llm_env  # noqa: F401  (registers TokenMDP-v0)
from agents.harness.distributed import set_num_threads
from agents.harness.logging import RunLogger
from scripts.options import require_writable


class SayReward:
    """1.0 for exactly ``target``, 0.5 for a completion that starts with it, else 0.0."""

    def __init__(self, target: str):
        self.target = target
        self.name = f"say:{target}"

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return np.array(
            [1.0 if c == self.target else 0.5 * c.startswith(self.target) for c in completions],
            dtype=np.float32,
        )


class SharedTagsCallback(BaseCallback):
    """Logs finished episodes with the shared tags, every ``every`` episodes (x = episodes)."""

    def __init__(self, logger: RunLogger, every: int = 50):
        super().__init__()
        self.run_logger = logger
        self.every = every
        self.rewards: list[float] = []
        self.gold: list[float] = []
        self.lengths: list[int] = []
        self.episodes = 0

    def _on_step(self) -> bool:
        for info, reward, done in zip(
            self.locals["infos"], self.locals["rewards"], self.locals["dones"]
        ):
            if not done:
                continue
            self.episodes += 1
            self.rewards.append(float(reward))
            self.lengths.append(int(info["length"]))
            if "gold_reward" in info:
                self.gold.append(float(info["gold_reward"]))
            if self.episodes % self.every == 0:
                metrics = {
                    "reward/train": np.mean(self.rewards[-self.every :]),
                    "episode/length": np.mean(self.lengths[-self.every :]),
                }
                if self.gold:
                    metrics["reward/gold"] = np.mean(self.gold[-self.every :])
                self.run_logger.log(self.episodes, metrics)
        return True


def evaluate(model: PPO, env: gym.Env, episodes: int, seed: int) -> float:
    """Mean final reward of ``episodes`` greedy episodes."""
    total = 0.0
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(int(action))
            done = terminated or truncated
        total += reward
    return total / episodes


def train(
    target: str = "7",
    reward: str = "say",
    timesteps: int = 6000,
    seed: int = 0,
    run_dir: str | Path = "runs/arithmetic/sb3_ppo-baseline",
    eval_episodes: int = 100,
) -> dict[str, float]:
    """Train SB3 PPO on TokenMDP-v0 (single-digit arithmetic prompts); return before/after."""
    set_num_threads(1)  # an MLP this small runs fastest on one thread
    reward_model = SayReward(target) if reward == "say" else reward
    env_kwargs = {"task": "arithmetic", "task_kwargs": {"max_operand": 9},
                  "reward_model": reward_model, "max_new_tokens": 3}  # fmt: skip
    env = gym.make("TokenMDP-v0", **env_kwargs)
    eval_env = gym.make("TokenMDP-v0", split="eval", **env_kwargs)
    config = {"algorithm": "stable_baselines3.PPO", "policy": "MultiInputPolicy", "target": target,
              "reward": reward, "timesteps": timesteps, "seed": seed}  # fmt: skip
    logger = RunLogger(run_dir, config)
    model = PPO("MultiInputPolicy", env, n_steps=512, batch_size=128, learning_rate=1e-3,
                ent_coef=0.01, seed=seed, verbose=0)  # fmt: skip
    before = evaluate(model, eval_env, eval_episodes, seed=10_000)
    model.learn(total_timesteps=timesteps, callback=SharedTagsCallback(logger))
    after = evaluate(model, eval_env, eval_episodes, seed=10_000)
    logger.close()
    model.save(Path(run_dir) / "sb3_ppo")
    result = {"reward_before": before, "reward_after": after}
    (Path(run_dir) / "result.json").write_text(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sb3_baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="7", help="completion to say (reward 'say')")
    parser.add_argument("--reward", default="say", help="'say' or any load_reward_model spec")
    parser.add_argument("--timesteps", type=int, default=6000, help="SB3 environment steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of SB3 and the env")
    parser.add_argument("--run-dir", default="runs/arithmetic/sb3_ppo-baseline", help="output dir")
    args = parser.parse_args(argv)
    require_writable(parser, "--run-dir", args.run_dir)
    result = train(args.target, args.reward, args.timesteps, args.seed, args.run_dir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
