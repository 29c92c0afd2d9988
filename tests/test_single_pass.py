"""The single-pass update (one epoch / μ = 1, the batch one minibatch): the training forward
gives the old log-probs (and PPO's old values), and no second policy or critic forward runs.
It must change nothing: the same seed gives bit-identical weights and logged statistics to the
two-forward path (forced by switching the single pass off), on a small Llama whose embedding
table is padded beyond the tokenizer."""

from __future__ import annotations

import importlib

import pytest
import torch
from transformers import AutoModelForCausalLM

from agents.grpo import GRPO, GRPOConfig
from agents.harness.config import OptimConfig
from agents.maths.kl import KLConfig
from agents.ppo import PPO, PPOConfig
from agents.reinforce import Reinforce, ReinforceConfig
from llm_env.tasks import Task
from tests.pretrained import chat_prompts

pytestmark = pytest.mark.usefixtures("one_thread")

AGENTS = {
    "grpo": (GRPO, lambda: GRPOConfig(batch_size=2, group_size=2, minibatch_size=4)),
    "reinforce": (Reinforce, lambda: ReinforceConfig(batch_size=2, k=2, minibatch_size=4)),
    "ppo": (PPO, lambda: PPOConfig(batch_size=4, minibatch_size=4, epochs=1)),
}
LOGGED = ("reward/train", "kl/ref", "kl/exact", "policy/entropy", "loss/policy", "loss/total")


def reward(prompts, completions, **kwargs):
    return [float(len(str(c)) % 5) for c in completions]


def train(kind: str, policy_dir, run_dir, monkeypatch, single: bool):
    """Two iterations; the weights, the history and how often the single pass scored."""
    agent_cls, make_config = AGENTS[kind]
    config = make_config()
    config.precision, config.save_every, config.total_prompts = "fp32", 0, 2 * config.batch_size
    config.optim = OptimConfig(learning_rate=1e-3)
    config.kl = KLConfig(beta=0.1, kl_estimator=config.kl.kl_estimator)
    task = Task("plain", tuple(p[0]["content"] for p in chat_prompts(8)), (), (), None, 4, 16)
    env = {"task": task, "reward_model": reward, "gold_reward_model": None}
    module, calls = importlib.import_module(f"agents.{kind}"), []
    counted = module.training_forward_scores
    with monkeypatch.context() as patch:
        patch.setattr(module, "training_forward_scores",
                      lambda *a: calls.append(1) or counted(*a))  # fmt: skip
        if not single:
            patch.setattr(agent_cls, "_single_pass_applies", lambda self, n: False)
        agent = agent_cls(str(policy_dir), None, env, config, run_dir)
        history = agent.learn()
    return {k: v.clone() for k, v in agent.policy.state_dict().items()}, history, len(calls)


@pytest.mark.parametrize("kind", sorted(AGENTS))
def test_single_pass_equals_the_two_forward_update(kind, pretrained_llama, tmp_path, monkeypatch):
    single = train(kind, pretrained_llama, tmp_path / "single", monkeypatch, single=True)
    double = train(kind, pretrained_llama, tmp_path / "double", monkeypatch, single=False)
    assert (single[2], double[2]) == (2, 0)  # the single pass scored both iterations of one run
    start = AutoModelForCausalLM.from_pretrained(pretrained_llama).state_dict()
    assert any(not torch.equal(single[0][k], start[k]) for k in start)  # training moved them
    for name, value in single[0].items():
        assert torch.equal(value, double[0][name]), name
    for a, b in zip(single[1], double[1], strict=True):
        assert {k: a[k] for k in LOGGED if k in a} == {k: b[k] for k in LOGGED if k in b}


def test_online_agents_stop_on_the_checkpoints_own_stop_ids(pretrained_llama, tmp_path):
    """The policy's generation_config lists <|endoftext|> beside EOS: both end an episode."""
    task = Task("plain", tuple(p[0]["content"] for p in chat_prompts(8)), (), (), None, 4, 16)
    env = {"task": task, "reward_model": reward, "gold_reward_model": None}
    agent = GRPO(str(pretrained_llama), None, env, AGENTS["grpo"][1](), tmp_path)
    tokenizer = agent.tokenizer
    second = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert agent.env.setup.stop_ids == (tokenizer.eos_token_id, second)
