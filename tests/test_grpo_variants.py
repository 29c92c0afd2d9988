"""GRPO's long-CoT options: GSPO's sequence-level ratio, CISPO, the entropy bonus and training on
the highest-entropy tokens. Each pure function against hand-computed numbers, then each option
through the env, asserting what it does to the ratio or to the per-token gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import agents.grpo as grpo
import llm_env
from agents.grpo import GRPO, GRPOConfig
from agents.harness.config import OptimConfig
from agents.maths.kl import KLConfig
from agents.maths.losses import (
    cispo_objective,
    clip_objective,
    entropy_bonus,
    entropy_of,
    high_entropy_mask,
    sequence_log_ratio,
    token_log_ratio,
)
from llm_env.tasks import Task
from reward_models.base import FunctionRewardModel
from tests import toy
from tests.helpers import ARITH
from tests.pretrained import chat_prompts

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTH_REWARD = {**ARITH, "reward_model": "tests.test_env_bad_input:score_by_length"}

# -- the pure functions, by hand ----------------------------------------------------------------


def test_sequence_log_ratio_by_hand():
    """Row 0: log-ratios 0.2, −0.4 (third token masked) → mean −0.1; row 1: 0.3 alone."""
    old = torch.zeros(2, 3)
    logprobs = torch.tensor([[0.2, -0.4, 5.0], [0.3, 7.0, 7.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    log_ratio = sequence_log_ratio(logprobs, old, mask)
    torch.testing.assert_close(log_ratio, torch.tensor([[-0.1] * 3, [0.3] * 3]))
    torch.testing.assert_close(token_log_ratio(logprobs, old, mask), logprobs)
    # GSPO-token: d s_i / d log π(y_t) = s_i for each token, its own token only
    (torch.exp(log_ratio) * mask).sum().backward()
    s0, s1 = math.exp(-0.1), math.exp(0.3)
    torch.testing.assert_close(logprobs.grad, torch.tensor([[s0, s0, 0.0], [s1, 0.0, 0.0]]))


def test_sequence_ratio_gradient_is_gspos_when_tokens_weigh_the_same():
    """Σ_t s_i·A over a sequence's tokens (token mean) has the gradient of GSPO's s_i·A."""
    old = torch.tensor([[-1.0, -2.0, -0.5]])
    mask = torch.ones(1, 3)
    start = torch.tensor([[-0.9, -2.3, -0.4]])
    ours = start.clone().requires_grad_(True)
    (torch.exp(sequence_log_ratio(ours, old, mask)) * 2.0).mean().backward()
    direct = start.clone().requires_grad_(True)
    (torch.exp((direct - old).mean()) * 2.0).backward()  # s_i = exp(mean log ρ), A = 2
    torch.testing.assert_close(ours.grad, direct.grad)


def test_clip_objective_flags_by_hand():
    log_ratio = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    objective, ratio, low, high = clip_objective(log_ratio, log_ratio, advantages, 0.8, 1.28)
    torch.testing.assert_close(objective, torch.tensor([[1.28, -1.5, 0.5, -0.8]]))
    assert high.tolist() == [[True, False, False, False]]  # the clip took the gradient away
    assert low.tolist() == [[False, False, False, True]]


def test_cispo_objective_by_hand():
    """w = min(ρ, 5): ρ = 0.5, 1, 2, 8 → w = 0.5, 1, 2, 5; the gradient w·A flows through every
    token's log-prob, capped or not; the value is w·A·log π."""
    old = torch.zeros(1, 4)
    ratios = torch.tensor([[0.5, 1.0, 2.0, 8.0]])
    logprobs = torch.log(ratios).requires_grad_(True)
    advantages = torch.tensor([[1.0, -1.0, 2.0, 1.0]])
    log_ratio = token_log_ratio(logprobs, old, torch.ones(1, 4))
    objective, ratio, low, high = cispo_objective(log_ratio, logprobs, advantages, 0.0, 5.0)
    w = torch.tensor([[0.5, 1.0, 2.0, 5.0]])
    torch.testing.assert_close(objective, w * advantages * torch.log(ratios))
    torch.testing.assert_close(ratio, ratios)
    assert high.tolist() == [[False, False, False, True]] and not low.any()
    objective.sum().backward()
    torch.testing.assert_close(logprobs.grad, w * advantages)


def test_high_entropy_mask_by_hand():
    entropy = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 9.0], [0.6, 0.7, 0.8, 0.9, 1.0, 9.0]])
    mask = torch.tensor([[1.0] * 5 + [0.0], [1.0] * 5 + [0.0]])  # the 9.0s are padding
    # ten tokens 0.1..1.0: the 0.8-quantile is 0.8 + 0.2·(0.9 − 0.8) = 0.82 → 0.9 and 1.0 kept
    keep = high_entropy_mask(entropy, mask, 0.2)
    assert keep.tolist() == [[0.0] * 6, [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]]
    assert torch.equal(high_entropy_mask(entropy, mask, 1.0), mask)  # ρ = 1 keeps every token
    # ties at the threshold are all kept: 0.75-quantile of (0, 1, 1, 1) is 1
    tied = high_entropy_mask(torch.tensor([[1.0, 1.0, 1.0, 0.0]]), torch.ones(1, 4), 0.25)
    assert tied.tolist() == [[1.0, 1.0, 1.0, 0.0]]
    # the pool sets the threshold (other processes' tokens): 0.5-quantile of 0..4 is 2
    pooled = high_entropy_mask(entropy[:1], mask[:1], 0.5, pool=torch.arange(5.0))
    assert pooled.tolist() == [[0.0] * 6]
    assert not high_entropy_mask(entropy, torch.zeros_like(mask), 0.2).any()  # no token


def test_entropy_bonus_by_hand():
    """Uniform over two tokens: ln 2; (½, ¼, ¼): 1.5·ln 2; −inf logits (a truncated or padded
    row) contribute 0. Bonus = −coef × their mean over the masked tokens."""
    logits = torch.log(torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]]))
    log_probs = torch.log_softmax(logits, dim=-1)
    entropy = entropy_of(log_probs, log_probs.exp())
    torch.testing.assert_close(entropy, torch.tensor([[math.log(2), 1.5 * math.log(2), 0.0]]))
    loss, stats = entropy_bonus(entropy, torch.tensor([[1.0, 1.0, 0.0]]), coef=0.1)
    assert loss.item() == pytest.approx(-0.1 * 1.25 * math.log(2))
    assert stats["loss/entropy"] == pytest.approx(1.25 * math.log(2))


def test_ratio_bounds_take_the_levels_defaults():
    assert GRPOConfig().ratio_bounds() == (1.0 - 0.2, 1.0 + 0.2)
    gspo = GRPOConfig(importance_sampling_level="sequence")
    assert gspo.ratio_bounds() == (1.0 - 3e-4, 1.0 + 4e-4)
    # replace() keeps an unset ε unset: the new level's default applies
    assert dataclasses.replace(GRPOConfig(), importance_sampling_level="sequence").ratio_bounds() \
        == gspo.ratio_bounds()  # fmt: skip
    set_eps = GRPOConfig(importance_sampling_level="sequence", clip_eps_low=0.1, clip_eps_high=0.3)
    assert set_eps.ratio_bounds() == (1.0 - 0.1, 1.0 + 0.3)
    assert GRPOConfig(loss_type="cispo").ratio_bounds() == (0.0, 5.0)
    assert GRPOConfig(loss_type="cispo", cispo_max_weight=2.0).ratio_bounds() == (0.0, 2.0)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"importance_sampling_level": "seq"}, r"importance_sampling_level must be one of \["),
        ({"loss_type": "gspo"}, r"loss_type must be one of \['cispo', 'dapo'"),
        ({"clip_eps_low": 1.5}, r"clip_eps_low must be in \(0.0, 1.0\], got 1.5"),
        ({"clip_eps_high": 0.0}, r"clip_eps_high must be > 0, got 0.0"),
        ({"cispo_max_weight": -1.0}, r"cispo_max_weight must be > 0, got -1.0"),
        ({"entropy_coef": -0.1}, r"entropy_coef must be >= 0, got -0.1"),
        ({"top_entropy_quantile": 0.0}, r"top_entropy_quantile must be in \(0.0, 1.0\], got 0.0"),
        ({"top_entropy_quantile": 1.2}, r"top_entropy_quantile must be in \(0.0, 1.0\], got 1.2"),
    ],
)
def test_bad_values_name_the_field_and_the_range(options, message):
    with pytest.raises(ValueError, match=message):
        GRPOConfig(**options)


# -- through the env ------------------------------------------------------------------------------


def small_config(**overrides) -> GRPOConfig:
    optim = OptimConfig(learning_rate=overrides.pop("learning_rate", 1e-3))
    kl = KLConfig(**overrides.pop("kl", {"beta": 0.0}))
    base = dict(batch_size=4, group_size=4, minibatch_size=16, total_prompts=4, precision="fp32")
    return GRPOConfig(**{**base, "save_every": 0, **overrides}, optim=optim, kl=kl)


def make_agent(tokenizer, tmp_path, config, env=LENGTH_REWARD, reward_model=None) -> GRPO:
    policy = llm_env.tiny_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32)
    return GRPO(policy, tokenizer, env, config, tmp_path, reward_model)


def spy_on_loss(monkeypatch) -> list[dict]:
    """Record each minibatch's ``_loss`` inputs; its log-probs keep their gradient."""
    calls, loss = [], GRPO._loss

    def spy(self, logprobs, entropy, scores, advantages, idx, mask, beta, keep=None):
        logprobs.retain_grad()
        calls.append({"logprobs": logprobs, "old": scores.logprobs[idx], "mask": mask,
                      "advantages": advantages[idx], "entropy": scores.entropy[idx],
                      "keep": None if keep is None else keep[idx]})  # fmt: skip
        return loss(self, logprobs, entropy, scores, advantages, idx, mask, beta, keep)

    monkeypatch.setattr(GRPO, "_loss", spy)
    return calls


def spy_on_objective(monkeypatch, loss_type: str) -> list[dict]:
    """Record each call of ``loss_type``'s per-token objective: its ratio and bounds."""
    calls, objective = [], grpo.OBJECTIVES[loss_type]

    def spy(log_ratio, logprobs, advantages, low, high):
        out = objective(log_ratio, logprobs, advantages, low, high)
        calls.append({"ratio": out[1].detach(), "bounds": (low, high)})
        return out

    monkeypatch.setitem(grpo.OBJECTIVES, loss_type, spy)
    return calls


def test_sequence_level_gives_every_token_of_a_sequence_one_clipped_ratio(
    tmp_path, arithmetic_tokenizer, monkeypatch
):
    """GSPO, μ = 2: the second pass is off-policy. Within each sequence every token carries the
    same ratio s_i = exp(mean_t log ρ_t), so the same clipped ratio, with GSPO's ε."""
    config = small_config(importance_sampling_level="sequence", num_iterations=2, minibatch_size=8)
    agent = make_agent(arithmetic_tokenizer, tmp_path, config)
    losses, objectives = spy_on_loss(monkeypatch), spy_on_objective(monkeypatch, "grpo")
    agent.learn()
    assert len(losses) == len(objectives) == 4  # 2 passes × 2 minibatches
    moved = 0.0
    for inputs, call in zip(losses, objectives):
        assert call["bounds"] == (1.0 - 3e-4, 1.0 + 4e-4)
        mask, ratio = inputs["mask"] > 0, call["ratio"]
        clipped = ratio.clamp(*call["bounds"])
        log_rho = (inputs["logprobs"].detach() - inputs["old"]) * inputs["mask"]
        s = torch.exp(log_rho.sum(-1) / inputs["mask"].sum(-1))
        for i in range(len(ratio)):
            assert ratio[i][mask[i]].unique().numel() == 1  # one ratio per sequence
            assert clipped[i][mask[i]].unique().numel() == 1  # so one clipped ratio
            torch.testing.assert_close(ratio[i][mask[i]][0], s[i])
        moved = max(moved, (ratio[mask] - 1).abs().max().item())
    assert moved > 4e-4  # off-policy by more than GSPO's ε: the clip bites


def test_token_level_ratios_differ_within_a_sequence(tmp_path, arithmetic_tokenizer, monkeypatch):
    """The contrast: per token, the second pass's ratios vary along a sequence."""
    config = small_config(num_iterations=2, minibatch_size=8)
    agent = make_agent(arithmetic_tokenizer, tmp_path, config)
    losses, objectives = spy_on_loss(monkeypatch), spy_on_objective(monkeypatch, "grpo")
    agent.learn()
    inputs, call = losses[-1], objectives[-1]
    mask = inputs["mask"] > 0
    assert any(call["ratio"][i][mask[i]].unique().numel() > 1 for i in range(len(mask)))


def test_top_entropy_quantile_trains_only_the_high_entropy_tokens(
    tmp_path, arithmetic_tokenizer, monkeypatch
):
    """ρ = 0.2, β = 0: the policy loss's gradient reaches the log-probs of the 20% of the batch's
    tokens with the highest entropy, and no other token's."""
    agent = make_agent(arithmetic_tokenizer, tmp_path, small_config(top_entropy_quantile=0.2))
    calls = spy_on_loss(monkeypatch)
    history = agent.learn()
    (inputs,) = calls  # one iteration, one minibatch (the single pass)
    mask, entropy, keep = inputs["mask"] > 0, inputs["entropy"], inputs["keep"]
    threshold = torch.quantile(entropy[mask], 0.8)
    assert torch.equal(keep > 0, (entropy >= threshold) & mask)
    n = int(mask.sum())
    assert 0.2 <= keep.sum().item() / n <= 0.2 + 2 / n
    assert history[-1]["grpo/entropy_kept_fraction"] == pytest.approx(keep.sum().item() / n)
    grad = inputs["logprobs"].grad
    signal = (inputs["advantages"][:, None] != 0) & (keep > 0)
    assert torch.all(grad[~(keep > 0)] == 0)  # dropped tokens: no gradient at all
    assert signal.any() and torch.all(grad[signal] != 0)  # kept tokens with A ≠ 0: a gradient


def test_cispo_gradient_is_the_capped_weight_times_the_advantage(
    tmp_path, arithmetic_tokenizer, monkeypatch
):
    """CISPO, cap 1, μ = 2: ∂loss/∂log π(y_t) = −min(ρ_t, 1)·A_i / (the minibatch's tokens), also
    where ρ_t > 1 + ε (the clipped surrogate would give those no gradient)."""
    config = small_config(loss_type="cispo", cispo_max_weight=1.0, num_iterations=2,
                          minibatch_size=8)  # fmt: skip
    agent = make_agent(arithmetic_tokenizer, tmp_path, config)
    calls = spy_on_loss(monkeypatch)
    agent.learn()
    capped = 0
    for inputs in calls:
        m = inputs["mask"]
        ratio = torch.exp(inputs["logprobs"].detach() - inputs["old"])
        expected = -ratio.clamp(max=1.0) * inputs["advantages"][:, None] / m.sum()
        torch.testing.assert_close(inputs["logprobs"].grad * m, expected * m)
        capped += int(((ratio > 1.0) & (m > 0) & (inputs["advantages"][:, None] != 0)).sum())
    assert capped > 0  # some tokens were capped, and still got their gradient


def test_entropy_coef_raises_the_entropy_when_the_reward_is_flat(tmp_path, arithmetic_tokenizer):
    """A constant reward gives zero advantages: without the bonus nothing moves; with it, the
    policy's entropy rises (next-token entropy after a fixed prompt, exactly)."""
    flat = FunctionRewardModel(lambda prompts, completions: [1.0] * len(completions), "flat")
    ids = torch.tensor([arithmetic_tokenizer("3+4=", add_special_tokens=False)["input_ids"]])

    def next_token_entropy(policy) -> float:
        with torch.no_grad():
            log_probs = torch.log_softmax(policy(ids).logits[0, -1].float(), dim=-1)
        return entropy_of(log_probs, log_probs.exp()).item()

    histories = {}
    for coef in (0.0, 1.0):
        config = small_config(entropy_coef=coef, total_prompts=16, learning_rate=1e-2)
        agent = make_agent(arithmetic_tokenizer, tmp_path / str(coef), config, ARITH, flat)
        before = {n: p.detach().clone() for n, p in agent.policy.named_parameters()}
        start = next_token_entropy(agent.policy)
        histories[coef] = agent.learn()
        moved = any(not torch.equal(p, before[n]) for n, p in agent.policy.named_parameters())
        assert moved == (coef > 0), coef
        assert (next_token_entropy(agent.policy) > start) == (coef > 0), coef
    bonus = histories[1.0]
    assert bonus[-1]["policy/entropy"] > bonus[0]["policy/entropy"]
    # on-policy single pass: the bonus's entropy is the logged one, from the same logits
    assert bonus[0]["loss/entropy"] == pytest.approx(bonus[0]["policy/entropy"], rel=1e-5)


def test_entropy_bonus_is_over_the_tokenizers_vocabulary(pretrained_llama, tmp_path, monkeypatch):
    """A checkpoint whose embedding table is padded beyond its tokenizer: the bonus's entropy is
    that of a distribution over the tokenizer's ids only."""
    task = Task("plain", tuple(p[0]["content"] for p in chat_prompts(8)), (), (), None, 4, 16)
    env = {"task": task, "reward_model": lambda p, c: [float(len(x)) for x in c],
           "gold_reward_model": None}  # fmt: skip
    seen = []

    def spy(log_probs, probs):
        seen.append(log_probs.shape[-1])
        torch.testing.assert_close(probs.detach().sum(-1), torch.ones(probs.shape[:-1]))
        return entropy_of(log_probs, probs)

    monkeypatch.setattr(grpo, "entropy_of", spy)
    config = small_config(batch_size=2, group_size=2, minibatch_size=4, total_prompts=2,
                          entropy_coef=0.01)  # fmt: skip
    agent = GRPO(str(pretrained_llama), None, env, config, tmp_path)
    history = agent.learn()
    assert seen == [len(agent.tokenizer)]
    assert agent.policy.get_input_embeddings().weight.shape[0] > len(agent.tokenizer)
    assert history[0]["loss/entropy"] == pytest.approx(history[0]["policy/entropy"], rel=1e-5)


def test_single_pass_is_unchanged_by_the_new_options(tmp_path, arithmetic_tokenizer, monkeypatch):
    """GSPO + entropy bonus + top-entropy tokens, μ = 1, one minibatch: the single pass (old
    log-probs and entropies from the training forward) gives the weights the two-forward
    update gives."""
    options = dict(importance_sampling_level="sequence", entropy_coef=0.01,
                   top_entropy_quantile=0.5, total_prompts=8, kl={"beta": 0.1,
                   "kl_estimator": "k3"})  # fmt: skip
    weights = {}
    for single in (True, False):
        with monkeypatch.context() as patch:
            if not single:
                patch.setattr(GRPO, "_single_pass_applies", lambda self, n: False)
            agent = make_agent(
                arithmetic_tokenizer, tmp_path / str(single), small_config(**options)
            )
            agent.learn()
        weights[single] = agent.policy.state_dict()
    for name, value in weights[True].items():
        assert torch.equal(value, weights[False][name]), name


@pytest.mark.parametrize(
    "variant, baseline",
    [
        ({"importance_sampling_level": "sequence"}, {}),
        ({"loss_type": "cispo"}, {"loss_type": "dapo"}),
    ],
    ids=["gspo=grpo", "cispo=dapo"],
)
def test_on_policy_variants_update_as_their_baseline_on_the_toy(variant, baseline, tmp_path):
    """μ = 1, one minibatch: ρ ≡ 1 when the loss is taken, so GSPO's gradient is GRPO's and
    CISPO's is DAPO's, step for step. GSPO therefore shares the fixed point π* that
    ``test_grpo_reaches_closed_form_optimum_with_kl_in_the_reward`` reaches (Dr. GRPO
    aggregation, k1 in the reward); CISPO shares DAPO's token-mean aggregation."""
    task = toy.toy_task(max_new_tokens=2)
    tokenizer = task.tokenizer()
    weights = {}
    for name, options in (("variant", variant), ("baseline", baseline)):
        policy = llm_env.tiny_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=16)
        config = GRPOConfig(
            batch_size=8, group_size=8, minibatch_size=64, total_prompts=8 * 6, precision="fp32",
            save_every=0, scale_rewards="none", kl_placement="reward",
            **{"loss_type": "dr_grpo", **options},
            optim=OptimConfig(learning_rate=1e-2), kl=KLConfig(beta=0.5, kl_estimator="k1"),
        )  # fmt: skip
        agent = GRPO(policy, tokenizer, toy.toy_env_kwargs(task), config, run_dir=tmp_path / name)
        agent.learn()
        weights[name] = agent.policy.state_dict()
    for name, value in weights["variant"].items():
        torch.testing.assert_close(value, weights["baseline"][name], rtol=1e-5, atol=1e-6)
