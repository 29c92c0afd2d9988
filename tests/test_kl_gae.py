"""Pure functions of agents/maths (KL, GAE, losses, baselines) against hand-computed numbers,
and the one-pass log-probs against those recorded token by token during the rollout."""

from __future__ import annotations

import math

import pytest
import torch

from agents.maths.advantages import gae, kl_penalised_rewards, whiten
from agents.maths.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLConfig,
    exact_kl,
    kl_k1,
    kl_k2,
    kl_k3,
    make_kl_controller,
    sequence_kl_stats,
)
from agents.maths.losses import clipped_value_loss, ppo_clip_loss, reinforce_loss
from agents.models.critic import ValueModel, completion_values
from agents.models.policy import SamplingConfig
from agents.reinforce import BASELINES
from agents.sampling.online import score_rollout
from agents.sampling.rollout import rollout
from llm_env.vector import TokenMDPVectorEnv

ARITH = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}}


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_kl_estimators_match_hand_computed_values():
    logp, ref = t([math.log(0.5)]), t([math.log(0.25)])
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2), abs=1e-6)
    assert kl_k2(logp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2, abs=1e-6)
    assert kl_k3(logp, ref).item() == pytest.approx(-0.5 + math.log(2), abs=1e-6)


def test_exact_kl_sums_over_vocabulary_and_ignores_truncated_tokens():
    log_p = torch.log(t([[[0.5, 0.5, 0.0]]]))  # third token removed by truncation: -inf
    log_q = torch.log(t([[[0.25, 0.25, 0.5]]]))
    assert exact_kl(log_p, log_q).item() == pytest.approx(math.log(2), abs=1e-6)
    assert exact_kl(log_q, log_q).item() == pytest.approx(0.0, abs=1e-7)


def test_sequence_kl_stats_sum_over_tokens_and_average_over_sequences():
    logp = torch.log(t([[0.5, 0.5], [0.5, 0.9]]))
    ref = torch.log(t([[0.25, 0.5], [0.25, 0.1]]))
    mask = t([[1, 1], [1, 0]])
    stats = sequence_kl_stats(logp, ref, mask, exact=t([[0.1, 0.2], [0.3, 7.0]]))
    assert stats["kl/ref"] == pytest.approx(math.log(2), abs=1e-6)
    assert stats["kl/exact"] == pytest.approx((0.3 + 0.3) / 2, abs=1e-6)


def test_kl_controllers():
    fixed = make_kl_controller(KLConfig(beta=0.1))
    assert isinstance(fixed, FixedKLController) and fixed.update(5.0, 64) == 0.1
    adaptive = make_kl_controller(KLConfig(beta=0.1, kl_target=1.0, kl_horizon=100))
    assert isinstance(adaptive, AdaptiveKLController)
    assert adaptive.update(2.0, 10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # error clipped
    adaptive = AdaptiveKLController(0.1, 1.0, 100)
    assert adaptive.update(0.9, 10) == pytest.approx(0.1 * (1 - 0.1 * 10 / 100))
    restored = AdaptiveKLController(1.0, 1.0, 100)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value


def test_kl_penalised_rewards_put_the_score_on_the_last_token():
    rewards = kl_penalised_rewards(
        t([1.0, 2.0]), t([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]), t([[1, 1, 1], [1, 1, 0]]), 0.5
    )
    expected = t([[-0.05, -0.1, -0.15 + 1.0], [-0.2, -0.25 + 2.0, 0.0]])
    torch.testing.assert_close(rewards, expected)


def test_gae_matches_hand_computation():
    rewards = t([[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    values = t([[0.1, 0.2, 0.3], [0.4, 9.0, 9.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # seq 0: δ2 = 1 − .3 = .7; δ1 = .9·.3 − .2 = .07; δ0 = .9·.2 − .1 = .08; γλ = .72
    a1 = 0.07 + 0.72 * 0.7
    a0 = 0.08 + 0.72 * a1
    torch.testing.assert_close(adv, t([[a0, a1, 0.7], [0.1, 0.0, 0.0]]))
    torch.testing.assert_close(ret, t([[a0 + 0.1, a1 + 0.2, 1.0], [0.5, 0.0, 0.0]]))
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.8, last_values=t([0.0, 2.0]))
    assert adv[1, 0].item() == pytest.approx(0.5 + 0.9 * 2.0 - 0.4)  # bootstrapped
    assert adv[0, 2].item() == pytest.approx(0.7)


def test_whiten_over_masked_positions():
    x, mask = t([[1.0, 2.0, 3.0, 4.0, 100.0]]), t([[1, 1, 1, 1, 0]])
    std = math.sqrt(5.0 / 3.0)
    expected = t([[-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std, 0.0]])
    torch.testing.assert_close(whiten(x, mask), expected, atol=1e-5, rtol=1e-5)


def test_ppo_clip_loss_matches_hand_computation():
    logprobs = torch.log(t([[1.5, 0.5, 1.0]]))
    loss, stats = ppo_clip_loss(
        logprobs, t([[0.0, 0.0, 0.0]]), t([[1.0, 1.0, -2.0]]), t([[1, 1, 1]]), 0.2
    )
    # min(1.5·1, 1.2·1) = 1.2; min(.5·1, .8·1) = .5; min(1·−2, 1·−2) = −2
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 2.0) / 3, abs=1e-6)
    assert stats["policy/clipfrac"] == pytest.approx(2 / 3)


def test_clipped_value_loss_matches_hand_computation():
    values, old, returns, mask = t([[1.0, 0.0]]), t([[0.5, 0.5]]), t([[2.0, 0.4]]), t([[1, 1]])
    loss, stats = clipped_value_loss(values, old, returns, mask, clip=0.2)
    # max((1−2)², (0.7−2)²) = 1.69;  max((0−.4)², (.3−.4)²) = .16
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.16) / 2, abs=1e-6)
    assert stats["value/clipfrac"] == pytest.approx(0.5)
    loss, _ = clipped_value_loss(values, old, returns, mask, clip=None)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.16) / 2, abs=1e-6)


def test_reinforce_loss_and_baselines():
    loss, _ = reinforce_loss(t([[-1.0, -2.0], [-0.5, 0.0]]), t([1.0, -2.0]), t([[1, 1], [1, 0]]))
    assert loss.item() == pytest.approx(-(1.0 * -3.0 + -2.0 * -0.5) / 2)
    returns = t([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(BASELINES["rloo"](returns, 0.0), t([[2.5, 2.0, 1.5]]))
    torch.testing.assert_close(BASELINES["moving_average"](returns, 0.7), t([[0.7, 0.7, 0.7]]))
    torch.testing.assert_close(BASELINES["none"](returns, 0.7), t([[0.0, 0.0, 0.0]]))


@pytest.mark.parametrize(
    "sampling",
    [SamplingConfig(), SamplingConfig(temperature=0.7, top_k=6, top_p=0.9)],
    ids=["plain", "tempered-truncated"],
)
def test_one_pass_logprobs_equal_rollout_logprobs(tiny_policy, arithmetic_tokenizer, sampling):
    env = TokenMDPVectorEnv(
        num_envs=32,
        autoreset_mode="disabled",
        tokenizer=arithmetic_tokenizer,
        max_new_tokens=8,
        max_prompt_tokens=8,
        **ARITH,
    )
    prompts = [f"{i}+{3 * i}=" for i in range(32)]  # prompts of 4 to 6 tokens: left padding
    gen = torch.Generator().manual_seed(0)
    roll = rollout(tiny_policy, env, sampling, gen, prompts=prompts, precision="fp32")
    scores = score_rollout(tiny_policy, tiny_policy, roll, sampling, "fp32")
    assert roll.attention_mask[:, : roll.prompt_width].sum(-1).unique().numel() == 3
    assert roll.lengths.min() < roll.completion_mask.shape[1]  # some sequences ended early
    torch.testing.assert_close(scores.logprobs, roll.logprobs, atol=1e-5, rtol=0)
    assert torch.isfinite(scores.ref_logprobs).all()
    if not sampling.truncates and sampling.temperature == 1.0:
        torch.testing.assert_close(scores.ref_logprobs, roll.logprobs, atol=1e-5, rtol=0)
        assert scores.exact_kl.abs().max().item() < 1e-6


def test_critic_starts_at_zero_and_has_one_value_per_state(
    tiny_policy, arithmetic_tokenizer, tmp_path
):
    critic = ValueModel.from_policy(tiny_policy)
    ids = torch.tensor([[0, 5, 6, 7, 8], [4, 5, 6, 7, 1]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    values = completion_values(critic, ids, mask, prompt_width=3)
    assert values.shape == (2, 3) and values.abs().max().item() == 0.0
    torch.nn.init.normal_(critic.value_head.weight)
    critic.save_pretrained(tmp_path / "critic")
    loaded = ValueModel.from_pretrained(tmp_path / "critic")
    torch.testing.assert_close(loaded(ids, mask), critic(ids, mask))
