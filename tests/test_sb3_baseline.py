"""Stable-Baselines3's PPO learns on TokenMDP-v0 and logs the shared tags."""

from __future__ import annotations

import pytest

from scripts.sb3_baseline import SayReward, train
from scripts.studies.report.runs import read_scalars


def test_say_reward_by_hand():
    assert SayReward("7").score(["1+1="] * 4, ["7", "77", "17", ""]).tolist() == [1.0, 0.5, 0, 0]


@pytest.mark.slow
def test_sb3_ppo_learns_to_say_the_target(tmp_path):
    result = train(target="7", timesteps=5000, run_dir=tmp_path, eval_episodes=50)
    assert result["reward_before"] <= 0.2 and result["reward_after"] >= 0.9, result
    scalars, _ = read_scalars(tmp_path)
    rewards = [v for _, v in scalars["reward/train"]]
    assert rewards[-1] > rewards[0] + 0.3 and "episode/length" in scalars
    assert (tmp_path / "sb3_ppo.zip").is_file()
