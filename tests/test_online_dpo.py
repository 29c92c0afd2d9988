"""Online DPO: pairing, tie handling, both label modes, the missing-EOS penalty and the
geometric mixture against hand-computed numbers; the Nash-MD rollout against full forwards;
every option trains through the env; iterative DPO's rounds (reference, resume); the
closed-form optimum on the enumerable toy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import llm_env
from agents.harness.config import OptimConfig
from agents.harness.run import CHECKPOINT_DIR
from agents.maths.kl import KLConfig
from agents.models.lora import LoraOptions
from agents.models.policy import SamplingConfig, completion_logits
from agents.online_dpo import (
    OnlineDPO,
    OnlineDPOConfig,
    geometric_mixture_logits,
    penalise_missing_eos,
    preference_pairs,
)
from tests import toy
from tests.interrupt import learn_until_killed

pytestmark = pytest.mark.usefixtures("one_thread")
ARITH = {
    "task": "arithmetic",
    "task_kwargs": {"max_operand": 9},
    "reward_model": "tests.test_env_bad_input:score_by_length",
}


def test_pairs_of_two_samples_by_hand():
    scores = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 2.0]])  # prompt 1 ties
    chosen, rejected, ties = preference_pairs(scores, "argmax", 1.0)
    # rows are prompt · 2 + sample: prompt 0 → 0 beats 1; prompt 2 → 5 beats 4
    assert chosen.tolist() == [0, 5] and rejected.tolist() == [1, 4] and ties == 1


def test_best_against_worst_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.5, -0.3], [1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 2.0, 0.0]])
    chosen, rejected, ties = preference_pairs(scores, "argmax", 1.0)
    # prompt 0: best 1 (0.9), worst 3 (−0.3); prompt 1: all equal, a tie; prompt 2: the first
    # of equal ones, best 8 + 0, worst 8 + 1
    assert chosen.tolist() == [1, 8] and rejected.tolist() == [3, 9] and ties == 1


def test_all_ties_give_no_pair():
    chosen, rejected, ties = preference_pairs(torch.zeros(3, 2), "bradley_terry", 1.0)
    assert len(chosen) == len(rejected) == 0 and ties == 3


@pytest.mark.parametrize(("gap", "temperature"), [(0.7, 1.0), (0.7, 2.0), (-1.5, 1.0)])
def test_bradley_terry_win_frequency_is_the_sigmoid(gap, temperature):
    """N = 20,000 pairs a vs b with r_a − r_b = gap: a wins with probability σ(gap/τ). The
    frequency's standard deviation is √(p(1−p)/N) ≤ 0.0036; the bound 0.018 is 5 of them (a
    fair-coin generator off by 5 sd would fail with probability < 1e-6; the draw is seeded)."""
    N = 20_000
    scores = torch.tensor([[gap, 0.0]]).repeat(N, 1)
    generator = torch.Generator().manual_seed(0)
    chosen, _, ties = preference_pairs(scores, "bradley_terry", temperature, generator)
    p = 1 / (1 + math.exp(-gap / temperature))
    frequency = (chosen % 2 == 0).float().mean().item()  # row 2i: side a won
    assert ties == 0 and abs(frequency - p) <= 0.018, (frequency, p)
    argmax, _, _ = preference_pairs(scores, "argmax", temperature)
    assert ((argmax % 2 == 0).all() if gap > 0 else (argmax % 2 == 1).all()).item()


def test_missing_eos_penalty_by_hand():
    rewards = torch.tensor([1.0, 0.5, 2.0])
    terminated = torch.tensor([True, False, False])
    penalised = penalise_missing_eos(rewards, terminated, 1.5)
    torch.testing.assert_close(penalised, torch.tensor([1.0, -1.0, 0.5]))
    # the penalty turns a win of an unfinished completion around: 2.0 − 1.5 < 1.0
    chosen, _, _ = preference_pairs(penalised[[0, 2]][None], "argmax", 1.0)
    assert chosen.tolist() == [0]


def test_geometric_mixture_by_hand():
    policy = torch.log(torch.tensor([[0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.9, 0.1]]))
    # α = ½: ∝ (√(0.5·0.9), √(0.5·0.1)) = (0.6708, 0.2236) → (0.75, 0.25)
    mixed = geometric_mixture_logits(policy, ref, 0.5).exp()
    torch.testing.assert_close(mixed, torch.tensor([[0.75, 0.25]]))
    # unnormalised logits give the same mixture; α = 0 is π_θ, α = 1 is π_ref
    torch.testing.assert_close(geometric_mixture_logits(policy + 3.0, ref - 1.0, 0.5).exp(), mixed)
    torch.testing.assert_close(geometric_mixture_logits(policy, ref, 0.0).exp(), policy.exp())
    torch.testing.assert_close(geometric_mixture_logits(policy, ref, 1.0).exp(), ref.exp())
    # α = ¼ over three tokens: ∝ p^¾ q^¼
    p, q = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.6, 0.3, 0.1])
    expected = p**0.75 * q**0.25
    mixed = geometric_mixture_logits(p.log()[None], q.log()[None], 0.25).exp()
    torch.testing.assert_close(mixed, (expected / expected.sum())[None])


def small_config(**overrides) -> OnlineDPOConfig:
    """4 prompts × 2 iterations; ``overrides``: fields, ``learning_rate``, or a group as a dict."""
    groups = {"optim": OptimConfig(learning_rate=overrides.pop("learning_rate", 1e-3)),
              "kl": KLConfig(**overrides.pop("kl", {"beta": 0.1})),
              "sampling": SamplingConfig(**overrides.pop("sampling", {})),
              "lora": LoraOptions(**overrides.pop("lora", {}))}  # fmt: skip
    base = dict(batch_size=4, k=2, total_prompts=8, precision="fp32", save_every=0)
    return OnlineDPOConfig(**{**base, **overrides}, **groups)


def tiny(tokenizer):
    return llm_env.tiny_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32)


@torch.no_grad()
def test_mixture_rollout_samples_the_geometric_mixture(tmp_path, arithmetic_tokenizer):
    """Odd rows are sampled token by token (KV caches) from π_θ^(1−α)·π_ref^α at temperature
    T, even rows from π_θ: the recorded log-probs equal those of full forwards of both."""
    config = small_config(mixture_coef=0.4, sampling={"temperature": 0.7})
    agent = OnlineDPO(tiny(arithmetic_tokenizer), arithmetic_tokenizer, ARITH, config, tmp_path)
    for p in agent.ref.parameters():  # a reference unlike the policy
        p.add_(0.3 * torch.randn_like(p))
    roll = agent._sample(0)
    assert roll.group_size == 2 and len(roll.prompts) == 8
    assert roll.prompts[0::2] == roll.prompts[1::2]
    args = (roll.input_ids, roll.attention_mask, roll.prompt_width, agent.vocab_size)
    policy, ref = completion_logits(agent.policy, *args), completion_logits(agent.ref, *args)
    B, T, V = policy.shape
    mixture = geometric_mixture_logits(policy.reshape(-1, V), ref.reshape(-1, V), 0.4)
    for logits, rows in ((policy, slice(0, None, 2)), (mixture.view(B, T, V), slice(1, None, 2))):
        log_probs = F.log_softmax(logits[rows].float() / 0.7, dim=-1)
        tokens = roll.completion_ids[rows]
        expected = log_probs.gather(-1, tokens[..., None])[..., 0] * roll.completion_mask[rows]
        torch.testing.assert_close(roll.logprobs[rows], expected, atol=1e-5, rtol=1e-5)


def moved(agent: OnlineDPO, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(p, before[n]) for n, p in agent.policy.named_parameters())


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"k": 4, "labels": "bradley_terry"},
        {"loss_type": "ipo"},
        {"loss_type": "conservative", "missing_eos_penalty": 1.0},
        {"mixture_coef": 0.5},
        {"lora": {"r": 4}, "rounds": 2, "mixture_coef": 0.5},
        {"kl": {"beta": 0.1, "kl_target": 0.5, "kl_horizon": 10}},
    ],
    ids=["argmax", "k4-bt", "ipo", "cdpo-eos", "nash_md", "lora-rounds-mixture", "adaptive"],
)
def test_every_option_trains_through_the_env(options, tmp_path, arithmetic_tokenizer):
    config = small_config(**options)
    agent = OnlineDPO(tiny(arithmetic_tokenizer), arithmetic_tokenizer, ARITH, config, tmp_path)
    before = {n: p.detach().clone() for n, p in agent.policy.named_parameters()}
    history = agent.learn()
    assert moved(agent, before) and len(history) == 2
    last = history[-1]
    assert math.isfinite(last["loss/total"]) and last["online_dpo/pairs"] > 0
    assert last["kl/ref"] == last["kl/ref"]  # logged, finite
    if "mixture_coef" in options:
        assert "online_dpo/mixture_reward" in last
    if config.rounds == 2:
        assert [h["online_dpo/round"] for h in history] == [1.0, 2.0]


def test_ties_are_dropped_and_counted(tmp_path, arithmetic_tokenizer):
    """A constant reward: every pair ties, none is trained on, the weights stay put."""
    env = {**ARITH, "reward_model": "tests.test_online_dpo:constant"}
    agent = OnlineDPO(tiny(arithmetic_tokenizer), arithmetic_tokenizer, env, small_config(),
                      tmp_path)  # fmt: skip
    before = {n: p.detach().clone() for n, p in agent.policy.named_parameters()}
    history = agent.learn()
    assert not moved(agent, before)
    assert all(h["online_dpo/tie_fraction"] == 1.0 and h["online_dpo/pairs"] == 0 for h in history)


def constant(prompts, completions):
    return [1.0] * len(completions)


def test_rounds_replace_the_reference_and_resume_restores_it(tmp_path, arithmetic_tokenizer):
    """6 iterations in 3 rounds: the reference is the policy as it was at the end of steps 2
    and 4; a run killed after its step-3 checkpoint (mid round 2) resumes bit-identically."""
    torch.manual_seed(0)
    init = tiny(arithmetic_tokenizer)
    config = small_config(total_prompts=24, rounds=3, save_every=3, log_every=1,
                          labels="bradley_terry")  # fmt: skip
    seen = {}

    def build(run_dir, resume=False):
        policy = llm_env.tiny_gpt2(arithmetic_tokenizer, n_layer=1, n_head=2, n_embd=32,
                                   n_positions=32)  # fmt: skip
        policy.load_state_dict(init.state_dict())
        cfg = OnlineDPOConfig(**{**vars(config), "resume": resume})
        return OnlineDPO(policy, arithmetic_tokenizer, ARITH, cfg, run_dir)

    full = build(tmp_path / "full")
    original = full._train_step

    def record(step):
        seen[step] = {k: v.clone() for k, v in full.policy.state_dict().items()}
        out = original(step)
        seen[(step, "ref")] = {k: v.clone() for k, v in full.ref.state_dict().items()}
        return out

    full._train_step = record
    history = full.learn()
    assert [h["online_dpo/round"] for h in history] == [1, 1, 2, 2, 3, 3]
    for step, source in ((1, 0), (2, 2), (3, 2), (5, 4)):  # π_ref during step = π_θ before source
        ref = seen[(step, "ref")]
        assert all(torch.equal(ref[k], seen[source][k]) for k in ref), (step, source)
    cut = tmp_path / "cut"
    learn_until_killed(build(cut), step=5)  # steps 1-4 done, checkpoint of step 3
    assert (cut / CHECKPOINT_DIR / "reference").is_dir()
    resumed = build(cut, resume=True)
    assert [h["step"] for h in resumed.learn()] == list(range(1, 7))
    for name, model in (("policy", "policy"), ("reference", "ref")):
        mine, theirs = getattr(resumed, model).state_dict(), getattr(full, model).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), name


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="k must be >= 2"):
        OnlineDPOConfig(k=1)
    with pytest.raises(ValueError, match="labels"):
        OnlineDPOConfig(labels="random")
    with pytest.raises(ValueError, match="k must be 2"):
        OnlineDPOConfig(k=4, mixture_coef=0.5)
    with pytest.raises(ValueError, match="mixture_coef"):
        OnlineDPOConfig(mixture_coef=1.5)
    with pytest.raises(ValueError, match="beta must be > 0"):
        OnlineDPOConfig(kl=KLConfig(beta=0.0))
    with pytest.raises(ValueError, match="loss_type"):
        OnlineDPOConfig(loss_type="hinge")


BOUND = {0.5: 0.048, 1.0: 0.025}


@pytest.mark.slow
@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_bradley_terry_labels_reach_the_closed_form_optimum(beta, tmp_path):
    """Labels drawn from σ(r_a − r_b) with the exact reward, both samples from the current
    policy: online DPO's fixed point is π* ∝ π_ref·exp(r/β) (module docstring). The toy with
    one-token completions (8 of them, two rewarded: ties between the six others are dropped).

    TV to π* over seeds 0-5 (400 iterations of 128 pairs, lr 1e-2 decaying linearly; measured
    on 1 thread): β = 0.5 from 0.367: 0.026, 0.026, 0.031, 0.020, 0.039, 0.024 (mean 0.028, sd
    0.0067; bound mean + 3 sd = 0.048); β = 1 from 0.164: 0.021, 0.018, 0.015, 0.017, 0.018,
    0.014 (mean 0.017, sd 0.0024; bound 0.025). The issue asks for ≤ 0.05. 64 pairs per iteration
    left seed 5 at 0.083 (the six unrewarded completions are tied to each other only through
    noisy comparisons with the two rewarded ones); the two-token toy (57 completions) needs
    ~300k pairs for TV ≈ 0.05 (1024 × 300 iterations: 0.052, 70 s), too slow for a test."""
    task = toy.toy_task(max_new_tokens=1)
    tokenizer = task.tokenizer()
    policy = llm_env.tiny_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=16)
    seqs = toy.completions(len(tokenizer), tokenizer.eos_token_id, 1)
    pi_ref = toy.sequence_probs(policy, tokenizer, seqs)
    target = toy.optimum(pi_ref, toy.rewards_of(task, seqs), beta)
    assert toy.total_variation(pi_ref, target) > 0.15
    config = OnlineDPOConfig(
        batch_size=128, total_prompts=128 * 400, precision="fp32", save_every=0, log_every=0,
        labels="bradley_terry", optim=OptimConfig(learning_rate=1e-2, lr_schedule="linear"),
        kl=KLConfig(beta=beta),
    )  # fmt: skip
    agent = OnlineDPO(policy, tokenizer, toy.toy_env_kwargs(task), config, run_dir=tmp_path)
    history = agent.learn()
    tv = toy.total_variation(toy.sequence_probs(agent.policy, tokenizer, seqs), target)
    print(f"online DPO toy β={beta}: TV = {tv:.4f}")
    assert 0.2 < history[-1]["online_dpo/tie_fraction"] < 0.6  # ties happen and are dropped
    assert tv <= BOUND[beta], (tv, BOUND[beta])
