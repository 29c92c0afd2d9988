"""Scoring forwards that run each distinct prompt once (``SamplingConfig.share_prompts``).

``shared_prompt_logits`` packs each of the U distinct prompts with its completions into one
row under a 4-D mask and runs them in one forward. It must give the one full pass's logits and
gradients (up to rounding) on every architecture users bring, under both attention kernels
that take such a mask, in any row order, with left padding, masked tails and a padded
embedding table; and it must really run the prompts once (the forward call's shape is
checked, so a silent fall-back fails the test)."""

from __future__ import annotations

import pytest
import torch

from agents.data.offline import pair_logprobs, shared_prompt_pair_logprobs
from agents.dpo import DPOConfig
from agents.grpo import GRPO, GRPOConfig
from agents.harness.config import OptimConfig
from agents.maths.kl import KLConfig
from agents.models.memory import enable_gradient_checkpointing
from agents.models.policy import (
    SamplingConfig,
    completion_logits,
    distinct_prompts,
    shared_prompt_logits,
)
from llm_env.models import causal_lm, chat_tokenizer
from llm_env.tasks import Task
from tests.pretrained import ANSWERS, QUESTIONS, chat_prompts

pytestmark = pytest.mark.usefixtures("one_thread")

W, T = 6, 5


def tiny(architecture: str):
    tokenizer = chat_tokenizer([f"{q} {a}" for q, a in zip(QUESTIONS, ANSWERS)], vocab_size=300)
    model = causal_lm(architecture, tokenizer, hidden_size=32, num_layers=2, num_heads=4,
                      num_kv_heads=2, intermediate_size=64, padded_vocab=len(tokenizer) + 37)  # fmt: skip
    return model.eval(), len(tokenizer)


def batch(vocab: int):
    """Rows [A, B, A, C, B, A]: prompts A (6 tokens), B (4, left-padded), C (3); completions of
    T tokens, row 1's last two masked (ended early: pad id under mask 0)."""
    g = torch.Generator().manual_seed(0)
    prompts = {n: torch.randint(vocab, (n,), generator=g) for n in (6, 4, 3)}
    order = [6, 4, 6, 3, 4, 6]
    ids = torch.zeros((len(order), W + T), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(order):
        ids[row, W - n : W] = prompts[n]
        mask[row, W - n :] = 1
    ids[:, W:] = torch.randint(vocab, (len(order), T), generator=g)
    ids[1, -2:], mask[1, -2:] = 0, 0
    return ids, mask


def test_distinct_prompts_hand_computed():
    ids = torch.tensor([[5, 6], [0, 7], [5, 6], [0, 7], [1, 2]])
    mask = torch.tensor([[1, 1], [0, 1], [1, 1], [0, 1], [1, 1]])
    first, inverse = distinct_prompts(ids, mask)
    # the distinct rows, sorted: [0, 7 | 0, 1] < [1, 2 | 1, 1] < [5, 6 | 1, 1]
    assert first.tolist() == [1, 4, 0]
    assert inverse.tolist() == [2, 0, 2, 0, 1]
    assert distinct_prompts(ids[[0, 1, 4]], mask[[0, 1, 4]]) is None
    # the same ids under another mask are another prompt
    assert distinct_prompts(torch.tensor([[0, 7], [0, 7]]), torch.tensor([[0, 1], [1, 1]])) is None


@pytest.mark.parametrize(
    "architecture,kernel",
    [("llama", "sdpa"), ("qwen2", "sdpa"), ("mistral", "sdpa"), ("gpt2", "sdpa"),
     ("llama", "eager"), ("gpt2", "eager")],
)  # fmt: skip
def test_shared_prompts_give_the_full_pass_logits_and_gradients(architecture, kernel):
    model, vocab = tiny(architecture)
    model.set_attn_implementation(kernel)
    ids, mask = batch(vocab)
    shapes = []
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    results = {}
    for share in (False, True):
        shapes.clear()
        logits = completion_logits(model, ids, mask, W, vocab, share_prompts=share)
        targets = ids[:, W:]
        loss = (logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
                * mask[:, W:]).sum()  # fmt: skip
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        results[share] = logits.detach(), grads, list(shapes)
    hook.remove()
    (full, full_grads, full_shapes), (shared, shared_grads, shared_shapes) = results[0], results[1]
    assert full_shapes == [(6, W + T)]
    # the 3 distinct prompts once, each followed by slots of T - 1 tokens for its rows (A: 3)
    assert shared_shapes == [(3, W + 3 * (T - 1))]
    assert shared.shape == full.shape == (6, T, vocab)
    torch.testing.assert_close(shared, full, atol=2e-5, rtol=1e-4)
    for name, grad in full_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-3, msg=name)


def test_shared_prompts_fall_back_to_the_full_pass_where_nothing_is_shared():
    model, vocab = tiny("llama")
    ids, mask = batch(vocab)
    distinct = [0, 1, 3]
    assert shared_prompt_logits(model, ids[distinct], mask[distinct], W, vocab) is None
    assert shared_prompt_logits(model, ids[:, : W + 1], mask[:, : W + 1], W, vocab) is None
    assert shared_prompt_logits(model, ids, mask, W, vocab) is not None
    # 8 completions of a 1-token prompt: one row of 1 + 8·4 tokens, 33² > 2 · 8 · 6² attention
    same = ids[[0] * 8, W - 1 :], mask[[0] * 8, W - 1 :]
    assert shared_prompt_logits(model, *same, 1, vocab) is None
    assert shared_prompt_logits(model, same[0][:3], same[1][:3], 1, vocab) is not None  # 13² ≤ 216
    model.config._attn_implementation = "flash_attention_2"  # takes no 4-D mask
    assert shared_prompt_logits(model, ids, mask, W, vocab) is None
    with pytest.raises(TypeError, match="share_prompts must be True or False, got 'yes'"):
        SamplingConfig(share_prompts="yes")
    with pytest.raises(TypeError, match="share_prompts must be True or False, got 1"):
        DPOConfig(share_prompts=1)
    with pytest.raises(TypeError, match="fused_adamw must be True or False, got 'no'"):
        OptimConfig(fused_adamw="no")


def test_shared_prompts_under_gradient_checkpointing_give_the_same_gradients():
    """No KV cache is involved, so checkpointed layers (recomputed in backward) pack too."""
    model, vocab = tiny("llama")
    ids, mask = batch(vocab)
    grads = []
    for checkpointed in (False, True):
        if checkpointed:
            enable_gradient_checkpointing(model)
        model.train()
        logits = shared_prompt_logits(model, ids, mask, W, vocab)
        logits.float().log_softmax(-1)[..., 0].sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    assert any(g.abs().sum() > 0 for g in grads[0].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def grpo_run(policy_dir, run_dir, share: bool):
    config = GRPOConfig(
        batch_size=4, group_size=2, minibatch_size=8, total_prompts=4, precision="fp32",
        save_every=0, optim=OptimConfig(learning_rate=1e-3), kl=KLConfig(beta=0.1),
        sampling=SamplingConfig(share_prompts=share),
    )  # fmt: skip
    task = Task("plain", tuple(p[0]["content"] for p in chat_prompts(8)), (), (), None, 6, 16)
    reward = lambda prompts, completions, **kw: [float(len(str(c)) % 5) for c in completions]  # noqa: E731
    agent = GRPO(str(policy_dir), None, {"task": task, "reward_model": reward}, config, run_dir)
    history = agent.learn()
    return agent.policy.state_dict(), history[-1]


def test_grpo_with_shared_prompts_takes_the_same_step(pretrained_llama, tmp_path):
    """One GRPO iteration (same samples: the rollout does not depend on the option) with and
    without shared prompts: the same logged scores, gradient norm and weights, up to rounding.
    The 4 prompts drawn are distinct, so rows of different prompts share nothing."""
    full_weights, full_log = grpo_run(pretrained_llama, tmp_path / "full", share=False)
    shared_weights, shared_log = grpo_run(pretrained_llama, tmp_path / "shared", share=True)
    assert shared_log["reward/train"] == full_log["reward/train"]  # the same samples
    for key in ("kl/exact", "policy/entropy", "loss/policy", "grad_norm/policy"):
        assert shared_log[key] == pytest.approx(full_log[key], rel=1e-4, abs=1e-6), key
    # Adam's first step is lr × g/(|g| + eps): ±1e-3 wherever the gradient is not ~0, so a
    # wrong gradient sign shows as a 2e-3 gap; rounding moves a near-zero gradient's step less
    gap = max((f - s).abs().max().item()
              for f, s in zip(full_weights.values(), shared_weights.values()))  # fmt: skip
    assert gap < 1e-4


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_pairs_with_shared_prompts_give_the_padded_batch_logprobs_and_gradients(architecture):
    """DPO's pairs: prompts of 5 and 3 tokens, completions of 1 to 4 tokens (a lone EOS
    included), the rejected side longer or shorter than the chosen."""
    model, vocab = tiny(architecture)
    g = torch.Generator().manual_seed(1)

    def row(prompt, n):
        return prompt + torch.randint(vocab, (n,), generator=g).tolist(), len(prompt)

    prompts = [torch.randint(vocab, (n,), generator=g).tolist() for n in (5, 3, 5)]
    chosen = [row(prompts[0], 3), row(prompts[1], 1), row(prompts[2], 4)]
    rejected = [row(prompts[0], 4), row(prompts[1], 2), row(prompts[2], 1)]
    results = []
    for share in (False, True):
        logps = pair_logprobs(model, chosen, rejected, 0, torch.device("cpu"), "fp32", vocab, share)
        (logps * torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5, -1.0])).sum().backward()
        results.append((logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        model.zero_grad(set_to_none=True)
    (padded, padded_grads), (shared, shared_grads) = results
    # by hand for one sequence: the lone-EOS chosen completion of pair 1 is one token
    ids, n_prompt = chosen[1]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, n_prompt - 1, :vocab]
    assert padded[1].item() == pytest.approx(logits.log_softmax(-1)[ids[-1]].item(), abs=1e-5)
    torch.testing.assert_close(shared, padded, atol=1e-5, rtol=1e-5)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-3, msg=name)
    device = torch.device("cpu")
    assert shared_prompt_pair_logprobs(model, chosen, rejected, device, "fp32", vocab) is not None
    truncated = [(rejected[0][0][1:], rejected[0][1] - 1), *rejected[1:]]  # another prompt
    assert shared_prompt_pair_logprobs(model, chosen, truncated, device, "fp32", vocab) is None
