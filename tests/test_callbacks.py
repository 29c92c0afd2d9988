"""Stable-Baselines3 callbacks drive our agents: CheckpointCallback saves loadable policies at
the right x, a callback's ``logger.record`` lands in the run's events, ``on_step() -> False``
stops online and offline training cleanly, and plain functions work as in SB3."""

from __future__ import annotations

import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from transformers import AutoModelForCausalLM

import llm_env
from agents.harness.checkpoint import load_checkpoint_state
from agents.harness.config import OptimConfig
from agents.ppo import PPO, PPOConfig
from agents.presets import tiny_model_config
from agents.sft import SFT, SFTConfig
from scripts.studies.report.runs import read_scalars

ENV = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}, "reward_model": "length"}


def tiny(tokenizer):
    return llm_env.tiny_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32)


def ppo(tokenizer, run_dir, iterations=4) -> PPO:
    config = PPOConfig(
        batch_size=8, minibatch_size=4, epochs=1, precision="fp32", save_every=0, log_every=1,
        total_prompts=8 * iterations, optim=OptimConfig(learning_rate=1e-3),
    )  # fmt: skip
    return PPO(tiny(tokenizer), tokenizer, ENV, config, run_dir=run_dir)


class RecordAndStop(BaseCallback):
    """Records the x it sees and the run's reward; stops after ``stop_after`` steps."""

    def __init__(self, stop_after: int):
        super().__init__()
        self.stop_after = stop_after
        self.events: list[str] = []

    def _on_training_start(self) -> None:
        self.events.append(f"start@{self.num_timesteps}")

    def _on_step(self) -> bool:
        self.logger.record("custom/timesteps", self.num_timesteps)
        self.logger.record("custom/reward", self.locals["stats"]["reward/train"])
        self.events.append(f"step@{self.num_timesteps}")
        return self.n_calls < self.stop_after

    def _on_training_end(self) -> None:
        self.events.append("end")


def test_checkpoint_callback_saves_loadable_policies(arithmetic_tokenizer, tmp_path):
    agent = ppo(arithmetic_tokenizer, tmp_path / "run")
    saver = CheckpointCallback(save_freq=2, save_path=str(tmp_path / "saved"), name_prefix="ppo")
    agent.learn(callback=saver)
    saved = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert saved == ["ppo_16_steps.zip", "ppo_32_steps.zip"]  # x = prompts consumed
    last = AutoModelForCausalLM.from_pretrained(tmp_path / "saved" / "ppo_32_steps.zip")
    first = AutoModelForCausalLM.from_pretrained(tmp_path / "saved" / "ppo_16_steps.zip")
    final = dict(agent.policy.named_parameters())
    for name, value in last.named_parameters():
        assert torch.equal(value, final[name]), name
    assert any(
        not torch.equal(value, final[name]) for name, value in first.named_parameters()
    )  # the first one is from half-way


def test_a_callback_records_scalars_and_stops_online_training(arithmetic_tokenizer, tmp_path):
    agent = ppo(arithmetic_tokenizer, tmp_path / "run", iterations=6)
    callback = RecordAndStop(stop_after=3)
    history = agent.learn(callback=callback)
    assert [h["examples"] for h in history] == [8, 16, 24]
    assert callback.events == ["start@0", "step@8", "step@16", "step@24", "end"]
    assert load_checkpoint_state(tmp_path / "run" / "checkpoint")["step"] == 3
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    scalars, _ = read_scalars(tmp_path / "run")
    assert scalars["custom/timesteps"] == [(8, 8.0), (16, 16.0), (24, 24.0)]
    logged = [value for _, value in scalars["custom/reward"]]
    assert logged == pytest.approx([h["reward/train"] for h in history])
    assert callback.training_env is agent.env


def test_a_plain_function_stops_offline_training(arithmetic_task, arithmetic_tokenizer, tmp_path):
    calls = []

    def two_steps(locals_, globals_) -> bool:
        calls.append(locals_["stats"]["loss/total"])
        return len(calls) < 2

    config = tiny_model_config("sft", SFTConfig, batch_size=16, epochs=1.0, log_every=1,
                               save_every=100)  # fmt: skip
    sft = SFT(
        tiny(arithmetic_tokenizer), arithmetic_tokenizer, list(arithmetic_task.demonstrations),
        config, run_dir=tmp_path / "sft",
    )  # fmt: skip
    history = sft.learn(callback=two_steps)
    assert [h["step"] for h in history] == [1, 2]
    assert [h["loss/total"] for h in history] == pytest.approx(calls)
    assert load_checkpoint_state(tmp_path / "sft" / "checkpoint")["step"] == 2
    assert sft.num_timesteps == 32 and sft.get_env() is None


def test_a_callback_of_the_wrong_type_is_refused(arithmetic_tokenizer, tmp_path):
    agent = ppo(arithmetic_tokenizer, tmp_path / "run", iterations=1)
    with pytest.raises(TypeError, match="BaseCallback.*got int"):
        agent.learn(callback=3)
