"""GRPO: advantages, aggregations, the over-long penalty and the asymmetric clip against
hand-computed numbers; the closed-form optimum on the toy MDP; every option trains through the
env and does what it says."""

from __future__ import annotations

import math

import pytest
import torch

import llm_env
from agents.grpo import (
    ADVANTAGES,
    AGGREGATIONS,
    GRPO,
    GRPOConfig,
    soft_overlong_penalty,
)
from agents.harness.config import OptimConfig
from agents.maths.kl import KLConfig
from agents.maths.losses import clipped_surrogate
from agents.sampling.rollout import Rollout
from reward_models.base import FunctionRewardModel
from tests import toy
from tests.helpers import ARITH

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 6.0]])  # 2 prompts, G = 4


def test_advantages_by_hand():
    # group 1: mean 0.5, sample std sqrt(1/3); group 2: mean 3, sample std 2
    s1, eps = math.sqrt(1 / 3), 1e-4
    group = ADVANTAGES["group"](REWARDS, eps)
    torch.testing.assert_close(
        group,
        torch.tensor(
            [[0.5 / (s1 + eps), -0.5 / (s1 + eps), -0.5 / (s1 + eps), 0.5 / (s1 + eps)],
             [-1 / (2 + eps), -1 / (2 + eps), -1 / (2 + eps), 3 / (2 + eps)]]
        ),
    )  # fmt: skip
    none = ADVANTAGES["none"](REWARDS, eps)
    torch.testing.assert_close(
        none, torch.tensor([[0.5, -0.5, -0.5, 0.5], [-1.0, -1.0, -1.0, 3.0]])
    )
    batch_std = REWARDS.std().item()  # over all 8 rewards
    torch.testing.assert_close(ADVANTAGES["batch"](REWARDS, eps), none / (batch_std + eps))


def test_aggregations_by_hand():
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # GRPO: ((1 + 2)/2 + 4/1) / 2 = 2.75; DAPO: (1 + 2 + 4)/3; Dr. GRPO: 7 / (2 · 5)
    assert AGGREGATIONS["grpo"](losses, mask, 5).item() == pytest.approx(2.75)
    assert AGGREGATIONS["dapo"](losses, mask, 5).item() == pytest.approx(7 / 3)
    assert AGGREGATIONS["dr_grpo"](losses, mask, 5).item() == pytest.approx(0.7)


def test_soft_overlong_penalty_by_hand():
    lengths = torch.tensor([4.0, 6.0, 7.0, 8.0])  # L_max 8, buffer 4: ramp over lengths 5..8
    penalty = soft_overlong_penalty(lengths, max_new_tokens=8, buffer=4, penalty=1.0)
    torch.testing.assert_close(penalty, torch.tensor([0.0, -0.5, -0.75, -1.0]))


def test_clip_higher_by_hand():
    old = torch.zeros(1, 4)
    logprobs = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))  # ratios
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    objective, ratio, _ = clipped_surrogate(logprobs, old, advantages, 0.2, 0.28)
    # ρ=1.5, A>0: min(1.5, 1.28) = 1.28; ρ=1.5, A<0: min(−1.5, −1.28) = −1.5;
    # ρ=0.5, A>0: min(0.5, 0.8) = 0.5; ρ=0.5, A<0: min(−0.5, −0.8) = −0.8
    torch.testing.assert_close(objective, torch.tensor([[1.28, -1.5, 0.5, -0.8]]))


def small_config(**overrides) -> GRPOConfig:
    optim = OptimConfig(learning_rate=overrides.pop("learning_rate", 1e-3))
    kl = KLConfig(**overrides.pop("kl", {"beta": 0.1, "kl_estimator": "k3"}))
    base = dict(batch_size=4, group_size=4, minibatch_size=8, total_prompts=8, precision="fp32")
    return GRPOConfig(**{**base, "save_every": 0, **overrides}, optim=optim, kl=kl)


@pytest.mark.slow
def test_grpo_reaches_closed_form_optimum_with_kl_in_the_reward(tmp_path):
    """k1 in the reward, r − mean_G, Dr. GRPO aggregation: the KL-regularised optimum π*.

    TV to π* over seeds 0-5 (2026-11-29, 1 thread): mean 0.0140, sd 0.0035, max 0.0184;
    bound mean + 3 sd = 0.025 (the issue asks for ≤ 0.05; from 0.30 at the start)."""
    task = toy.toy_task(max_new_tokens=2)
    tokenizer = task.tokenizer()
    policy = llm_env.tiny_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=16)
    seqs = toy.completions(len(tokenizer), tokenizer.eos_token_id, 2)
    target = toy.optimum(
        toy.sequence_probs(policy, tokenizer, seqs), toy.rewards_of(task, seqs), 0.5
    )
    assert toy.total_variation(toy.sequence_probs(policy, tokenizer, seqs), target) > 0.3
    config = GRPOConfig(
        batch_size=8, group_size=8, minibatch_size=64, total_prompts=8 * 300, precision="fp32",
        save_every=0, scale_rewards="none", loss_type="dr_grpo", kl_placement="reward",
        optim=OptimConfig(learning_rate=1e-2, lr_schedule="linear"),
        kl=KLConfig(beta=0.5, kl_estimator="k1"),
    )  # fmt: skip
    agent = GRPO(policy, tokenizer, toy.toy_env_kwargs(task), config, run_dir=tmp_path)
    agent.learn()
    tv = toy.total_variation(toy.sequence_probs(agent.policy, tokenizer, seqs), target)
    print(f"GRPO toy TV = {tv:.4f}")
    assert tv <= 0.025


def moved(agent: GRPO, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(p, before[n]) for n, p in agent.policy.named_parameters())


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"scale_rewards": "none", "loss_type": "dr_grpo"},
        {"scale_rewards": "batch", "loss_type": "dapo"},
        {"clip_eps_high": 0.28, "num_iterations": 2, "minibatch_size": 16},
        {"kl_placement": "reward", "kl": {"beta": 0.1, "kl_estimator": "k1"}},
        {"kl": {"beta": 0.1, "kl_estimator": "k2"}},
        {"overlong": "soft_penalty", "overlong_buffer": 2},
        {"importance_sampling_level": "sequence", "num_iterations": 2, "minibatch_size": 16},
        {"loss_type": "cispo", "num_iterations": 2, "minibatch_size": 16},
        {"entropy_coef": 0.01, "top_entropy_quantile": 0.2},
    ],
    ids=["grpo", "dr_grpo", "batch-dapo", "clip_higher-mu2", "kl_in_reward", "k2_in_loss", "soft",
         "gspo-mu2", "cispo-mu2", "entropy"],
)  # fmt: skip
def test_every_option_trains_through_the_env(options, tmp_path, arithmetic_tokenizer):
    policy = llm_env.tiny_gpt2(arithmetic_tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32)
    env = {**ARITH, "reward_model": "tests.test_env_bad_input:score_by_length"}
    agent = GRPO(policy, arithmetic_tokenizer, env, small_config(**options), tmp_path)
    before = {n: p.detach().clone() for n, p in agent.policy.named_parameters()}
    history = agent.learn()
    assert moved(agent, before) and len(history) == 2
    last = history[-1]
    assert math.isfinite(last["loss/total"])
    if options.get("num_iterations") == 2:  # the second pass is off-policy: the ratio moved
        assert last["policy/ratio_deviation"] > 1e-4
    if "kl_placement" not in options:
        assert last["loss/kl"] >= 0  # k2, k3 ≥ 0 per token
    if options.get("overlong") == "soft_penalty":  # only completions cut at the limit pay
        assert last["reward/total"] <= last["reward/train"]


def test_one_pass_on_one_minibatch_is_on_policy(tmp_path, arithmetic_tokenizer):
    """μ = 1 and the whole batch in one minibatch: π_θ = π_old when the loss is taken, ρ ≡ 1."""
    policy = llm_env.tiny_gpt2(arithmetic_tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32)
    env = {**ARITH, "reward_model": "tests.test_env_bad_input:score_by_length"}
    agent = GRPO(policy, arithmetic_tokenizer, env, small_config(minibatch_size=16), tmp_path)
    assert all(h["policy/ratio_deviation"] < 1e-6 for h in agent.learn())


def test_beta_zero_loads_no_reference(tmp_path, arithmetic_tokenizer):
    policy = llm_env.tiny_gpt2(arithmetic_tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32)
    env = {**ARITH, "reward_model": "tests.test_env_bad_input:score_by_length"}
    agent = GRPO(policy, arithmetic_tokenizer, env, small_config(kl={"beta": 0.0}), tmp_path)
    assert agent.ref is None
    history = agent.learn()
    assert "kl/ref" not in history[-1] and "loss/kl" not in history[-1]


def test_dynamic_sampling_drops_flat_groups_and_fills_the_batch(tmp_path, arithmetic_tokenizer):
    """Prompts starting with an even digit earn a constant reward (their groups carry no
    signal); the others earn their completion's length."""

    def half_flat(prompts, completions):
        return [0.0 if int(p[0]) % 2 == 0 else float(len(c)) for p, c in zip(prompts, completions)]

    policy = llm_env.tiny_gpt2(arithmetic_tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32)
    rm = FunctionRewardModel(half_flat, "half-flat")
    config = small_config(dynamic_sampling=True, max_sampling_rounds=8, kl={"beta": 0.0})
    agent = GRPO(policy, arithmetic_tokenizer, ARITH, config, tmp_path, rm)
    history = agent.learn()
    assert all(h["grpo/dropped_fraction"] > 0 for h in history)
    assert all(h["grpo/zero_std_fraction"] == 0 for h in history)  # only informative groups


def test_mask_drops_truncated_completions_from_the_loss(
    tmp_path, arithmetic_tokenizer, monkeypatch
):
    """Every completion reported cut at the length limit: with overlong="mask" all of them
    leave the loss and the weights do not move; without it they train as usual."""
    monkeypatch.setattr(Rollout, "terminated", property(lambda roll: roll.rewards < -math.inf))
    env = {**ARITH, "reward_model": "tests.test_env_bad_input:score_by_length"}
    for overlong, moves in (("mask", False), ("none", True)):
        policy = llm_env.tiny_gpt2(
            arithmetic_tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32
        )
        agent = GRPO(policy, arithmetic_tokenizer, env, small_config(overlong=overlong),
                     tmp_path / overlong)  # fmt: skip
        before = {n: p.detach().clone() for n, p in agent.policy.named_parameters()}
        history = agent.learn()
        assert history[-1]["episode/eos_fraction"] == 0
        assert moved(agent, before) == moves, overlong
