"""PPO with process rewards and Monte-Carlo values (VinePPO): GAE on dense per-token rewards by
hand, the env's process rewards recorded token by token and composed into PPO's rewards,
the states a step starts at, Monte-Carlo values by branching against the exact values of the
enumerable toy MDP, and a process reward model failing mid-training."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import llm_env
from agents.harness.checkpoint import load_checkpoint_state
from agents.harness.config import OptimConfig
from agents.harness.run import TrainingStopped
from agents.maths.advantages import gae
from agents.maths.kl import KLConfig
from agents.models.policy import SamplingConfig
from agents.ppo import PPO, PPOConfig
from agents.sampling.branching import branch_values, hold_step_values, step_start_states
from agents.sampling.online import RolloutScores, sample
from agents.sampling.rollout import rollout
from llm_env import TokenMDPVectorEnv
from reward_models.base import FunctionRewardModel
from tests import toy
from tests.helpers import CHAIN, ids

PROMPT = "6+7+9="


pytestmark = pytest.mark.usefixtures("one_thread")


def t(x):
    return torch.tensor(x, dtype=torch.float32)


class Scripted(torch.nn.Module):
    """A "policy" that emits ``script[t]`` as its t-th token, whatever the context (the KV cache
    is the count of tokens fed so far)."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.script, self.vocab = script, vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=True,
                past_key_values=None):  # fmt: skip
        step = 0 if past_key_values is None else past_key_values + 1
        logits = torch.full((*input_ids.shape, self.vocab), -1e4)
        logits[:, -1, self.script[min(step, len(self.script) - 1)]] = 0.0
        return SimpleNamespace(logits=logits, past_key_values=step)


def ppo_config(**overrides) -> PPOConfig:
    base = dict(batch_size=8, minibatch_size=4, epochs=1, precision="fp32", save_every=1)
    return PPOConfig(**{**base, **overrides}, optim=OptimConfig(learning_rate=1e-3))


def test_gae_with_dense_rewards_matches_hand_computed_values():
    rewards, values = t([[0.5, -0.5, 1.0]]), t([[0.2, 0.4, 0.1]])
    advantages, returns = gae(rewards, values, t([[1, 1, 1]]), gamma=0.9, lam=0.5)
    # δ = r_t + γ V_{t+1} − V_t = [0.5 + 0.36 − 0.2, −0.5 + 0.09 − 0.4, 1.0 − 0.1]
    #   = [0.66, −0.81, 0.9];  A_t = δ_t + γλ A_{t+1}, γλ = 0.45
    expected = [0.66 + 0.45 * (-0.81 + 0.45 * 0.9), -0.81 + 0.45 * 0.9, 0.9]
    assert advantages[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert returns[0].tolist() == pytest.approx(
        [a + v for a, v in zip(expected, [0.2, 0.4, 0.1])], abs=1e-6
    )
    masked = gae(t([[0.5, -0.5, 0.0]]), values, t([[1, 1, 0]]), 0.9, 0.5)[0]  # ends after 2
    assert masked[0].tolist() == pytest.approx([0.5 + 0.36 - 0.2 + 0.45 * -0.9, -0.9, 0.0])


def test_rollout_records_process_rewards_and_ppo_pays_them_per_token(chain_tokenizer, tmp_path):
    script = ids(chain_tokenizer, "6+7=13;13+9=23$")
    env_kwargs = {**CHAIN, "process_reward_model": "task", "process_reward_mode": "shaping"}
    env = TokenMDPVectorEnv(2, **env_kwargs, autoreset_mode="disabled")
    roll = rollout(
        Scripted(script, len(chain_tokenizer)), env, SamplingConfig(), prompts=[PROMPT] * 2
    )
    assert roll.completions == ["6+7=13;13+9=23"] * 2
    # shaping: Φ 0 → 1 on the ";" (step 1 right), the last token pays −Φ = −1; outcome 0
    expected = [0.0] * 15
    expected[6], expected[14] = 1.0, -1.0
    assert roll.process_rewards.tolist() == [expected] * 2
    assert roll.rewards.tolist() == [0.0, 0.0]  # the episode's total: outcome + Σ process
    policy = llm_env.tiny_gpt2(chain_tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=64)
    agent = PPO(policy, chain_tokenizer, CHAIN, ppo_config(no_eos_penalty=-0.5), tmp_path)
    logprobs = torch.full((2, 15), math.log(0.5)) * roll.completion_mask
    ref_logprobs = torch.full((2, 15), math.log(0.25)) * roll.completion_mask
    scores = RolloutScores(logprobs, ref_logprobs, None, torch.zeros(2, 15))
    rewards = agent._token_rewards(roll, scores, beta=0.1)
    # r_t = −β·log(π/π_ref) + r_process,t (+ the outcome, 0, on the last token: it ended on EOS)
    assert rewards[0].tolist() == pytest.approx([-0.1 * math.log(2) + r for r in expected])


def test_step_start_states_follow_the_separator(chain_tokenizer):
    rows = ["6+7=13;13+9=22$", "6+7=13;$", "22$", "6+7=13;13+9=2;1", "6+7=13;13+9=22;"]
    completion_ids = torch.zeros((5, 15), dtype=torch.long)
    for i, text in enumerate(rows):
        completion_ids[i, : len(text)] = torch.tensor(ids(chain_tokenizer, text))
    lengths = t([len(r) for r in rows])
    # the start, and after each ";" — unless that state is terminal (row 4 is cut at the
    # length limit right after its second ";")
    assert step_start_states(chain_tokenizer, completion_ids, lengths, ";") == [
        (0, 0), (0, 7), (1, 0), (1, 7), (2, 0), (3, 0), (3, 7), (3, 14), (4, 0), (4, 7),
    ]  # fmt: skip
    assert step_start_states(chain_tokenizer, completion_ids[2:3], lengths[2:3], None) == [
        (0, 0), (0, 1), (0, 2),
    ]  # fmt: skip


def test_a_steps_states_hold_the_value_of_its_start():
    states = [(0, 0), (0, 2), (0, 5), (1, 0)]  # row 0: steps at 0-1, 2-4, 5; row 1: one step
    held = hold_step_values(torch.zeros(2, 6), t([6, 3]), states, t([1.0, 2.0, 3.0, 4.0]))
    assert held.tolist() == [[1, 1, 2, 2, 2, 3], [4, 4, 4, 0, 0, 0]]
    # GAE (γ = 1, λ = 0) on held values: a TD error only on each step's closing token
    rewards = t([[0, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0]])
    mask = t([[1] * 6, [1, 1, 1, 0, 0, 0]])
    advantages, _ = gae(rewards, held, mask, gamma=1.0, lam=0.0)
    assert advantages.tolist() == [[0, 1, 0, 0, 1, -2], [0, 0, -3, 0, 0, 0]]


@pytest.fixture(scope="module")
def toy_setup():
    task = toy.toy_task(max_new_tokens=2)
    tokenizer = task.tokenizer()
    policy = llm_env.tiny_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=16, seed=3)
    seqs = toy.completions(len(tokenizer), tokenizer.eos_token_id, 2)
    return task, tokenizer, policy, seqs, toy.sequence_probs(policy, tokenizer, seqs)


def exact_value(seqs, probs, rewards, prefix: tuple[int, ...]) -> tuple[float, float]:
    """E[r | y starts with prefix] and Var[r | ...] under the policy, by enumeration."""
    keep = np.array([s[: len(prefix)] == prefix and len(s) > len(prefix) for s in seqs])
    p = probs[keep] / probs[keep].sum()
    mean = float((p * rewards[keep]).sum())
    return mean, float((p * (rewards[keep] - mean) ** 2).sum())


def test_monte_carlo_values_by_branching_equal_the_exact_values(toy_setup):
    """V(s) from k continuations branched at s, against Σ π(y | s) r(y) enumerated, within 4
    standard errors, at the start and after each first token."""
    task, tokenizer, policy, seqs, probs = toy_setup
    rewards = toy.rewards_of(task, seqs)
    eos = tokenizer.eos_token_id
    prefixes = [()] + [(a,) for a in range(len(tokenizer)) if a != eos]
    env = TokenMDPVectorEnv(256, autoreset_mode="disabled", tokenizer=tokenizer,
                            **toy.toy_env_kwargs(task))  # fmt: skip
    k = 1024
    mc = branch_values(
        policy, env, SamplingConfig(), torch.Generator().manual_seed(0), [toy.PROMPT] * len(prefixes),
        [list(p) for p in prefixes], k, lambda roll: roll.rewards,
    )  # fmt: skip
    assert mc.shape == (len(prefixes), k)
    for prefix, estimates in zip(prefixes, mc):
        mean, var = exact_value(seqs, probs, rewards, prefix)
        stderr = math.sqrt(var / k)
        assert abs(estimates.mean().item() - mean) <= 4 * stderr + 1e-6, (prefix, mean)


def test_vineppo_replaces_the_critics_values_by_branch_means(toy_setup, tmp_path):
    """PPO's own path: with β = 0 a branch's return is its reward, so the Monte-Carlo value of
    every state (every token: the toy has no separator) estimates the exact value; the zero
    critic makes ``value/mc_error`` the mean |V_MC|."""
    task, tokenizer, policy, seqs, probs = toy_setup
    rewards = toy.rewards_of(task, seqs)
    config = ppo_config(batch_size=32, mc_values=32, kl=KLConfig(beta=0.0))
    agent = PPO(policy, tokenizer, toy.toy_env_kwargs(task), config, tmp_path)
    roll = sample(agent, [toy.PROMPT] * 32)
    critic = torch.zeros_like(roll.completion_mask)
    values, stats = agent._mc_values(roll, critic, beta=0.0)
    states = step_start_states(tokenizer, roll.completion_ids, roll.lengths, None)
    mc = torch.stack([values[i, s] for i, s in states])
    assert stats["value/mc_states"] == len(states) and len(states) > 32
    assert stats["value/mc_error"] == pytest.approx(mc.abs().mean().item(), abs=1e-6)
    by_state: dict[tuple, list[float]] = {}
    for (i, s), v in zip(states, mc.tolist()):
        by_state.setdefault(tuple(roll.completion_ids[i, :s].tolist()), []).append(v)
    for prefix, estimates in by_state.items():  # each estimate: the mean of 32 branches
        mean, var = exact_value(seqs, probs, rewards, prefix)
        stderr = math.sqrt(var / (32 * len(estimates)))
        assert abs(np.mean(estimates) - mean) <= 4 * stderr + 1e-6, (prefix, mean)


def test_a_process_reward_model_failing_mid_training_stops_cleanly(chain_tokenizer, tmp_path):
    broken = {"on": False}

    def flaky(prompts, completions):
        if broken["on"]:
            raise RuntimeError("PRM server went away")
        return [0.5] * len(prompts)

    env_kwargs = {**CHAIN, "process_reward_model": FunctionRewardModel(flaky, "flaky-prm")}
    policy = llm_env.tiny_gpt2(chain_tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=64)
    agent = PPO(policy, chain_tokenizer, env_kwargs, ppo_config(), tmp_path)
    agent.learn(total_prompts=16)
    broken["on"] = True
    pattern = r"(?s)step 3 .*flaky-prm.*RuntimeError: PRM server went away.*last good checkpoint"
    with pytest.raises(TrainingStopped, match=pattern):
        agent.learn(total_prompts=32)
    assert load_checkpoint_state(tmp_path / "checkpoint")["step"] == 2


def test_mc_values_must_be_a_count():
    with pytest.raises(ValueError, match="mc_values must be >= 0, got -1"):
        PPOConfig(mc_values=-1)
