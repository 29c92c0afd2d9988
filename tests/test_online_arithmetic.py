"""PPO and REINFORCE on single-digit ``arithmetic``: both raise the exact-match rate of a
partially trained policy well above where it started; the CLIs run end to end."""

from __future__ import annotations

import dataclasses
import json

import pytest
from transformers import AutoModelForCausalLM

from agents.harness.config import OptimConfig
from agents.maths.kl import KLConfig
from agents.ppo import PPO, PPOConfig
from agents.presets import TINY_MODEL_OPTIONS
from agents.reinforce import Reinforce, ReinforceConfig
from scripts import ppo as ppo_script
from scripts import reinforce as reinforce_script
from tests.arithmetic_policy import exact_match

ARITH = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}}
COMMON = dict(kl=KLConfig(beta=0.02), precision="fp32", save_every=0, log_every=1)

AGENTS = {
    "ppo": (
        PPO,
        PPOConfig(total_prompts=64 * 30, batch_size=64, minibatch_size=32, epochs=2, **COMMON),
    ),
    "reinforce": (
        Reinforce,
        ReinforceConfig(total_prompts=16 * 150, batch_size=16, k=4, whiten=True, **COMMON),
    ),
}
LEARNING_RATES = {"ppo": 1e-3, "reinforce": 5e-4}


# Gain in exact match over 12 RL seeds (0-11) from the same pre-trained policy, measured with
# this test's configs (2026-11-29, 1 thread, tokenmdp 782eb1e): PPO mean +0.128, sd 0.071 (one
# seed lost 0.05); REINFORCE mean +0.183, sd 0.045. A single seed cannot carry a threshold, so
# the test averages SEEDS seeds and asserts mean − 3·sd/√SEEDS of that mean's distribution.
SEEDS = 4
MIN_MEAN_GAIN = {"ppo": 0.128 - 3 * 0.071 / 2, "reinforce": 0.183 - 3 * 0.045 / 2}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(AGENTS))
def test_rl_raises_exact_match(name, pretrained_arithmetic, arithmetic_task, tmp_path):
    agent_cls, config = AGENTS[name]
    optim = OptimConfig(learning_rate=LEARNING_RATES[name])
    gains = []
    for seed in range(SEEDS):
        seeded = dataclasses.replace(config, seed=seed, optim=optim)
        agent = agent_cls(str(pretrained_arithmetic), None, ARITH, seeded, tmp_path / str(seed))
        tokenizer, prompts = agent.tokenizer, arithmetic_task.train_prompts
        before = exact_match(agent.policy, tokenizer, prompts)
        history = agent.learn()
        gains.append(exact_match(agent.policy, tokenizer, prompts) - before)
        assert 0.05 < before < 0.5
        last = history[-1]
        assert last["kl/exact"] > 0 and last["reward/gold"] == last["reward/train"]
    print(f"{name}: exact-match gains {[round(g, 3) for g in gains]}")
    assert sum(gains) / SEEDS >= MIN_MEAN_GAIN[name], gains


@pytest.mark.parametrize("script", [ppo_script, reinforce_script], ids=["ppo", "reinforce"])
def test_cli_trains_and_saves(script, tmp_path, capsys):
    args = ["--task", "arithmetic", "--task-kwargs", '{"max_operand": 9}', "--runs-root",
            str(tmp_path), "--name", "cli", "--total-prompts", "16", "--batch-size", "8",
            "--minibatch-size", "8", "--precision", "fp32", "--threads", "2"]  # fmt: skip
    script.main(args)
    agent = "ppo" if script is ppo_script else "reinforce"
    run = tmp_path / "arithmetic" / f"{agent}-cli"
    config = json.loads((run / "config.json").read_text())
    assert config["total_prompts"] == 16
    # no --policy: a fresh tiny GPT-2, trained with the tiny-model settings
    assert config["optim"]["learning_rate"] == TINY_MODEL_OPTIONS[agent]["optim.learning_rate"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["examples"] for m in lines] == [8, 16]
    assert AutoModelForCausalLM.from_pretrained(run / "final").config.vocab_size > 0
    assert "final policy in" in capsys.readouterr().out
