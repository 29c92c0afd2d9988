"""A partially trained arithmetic policy and its exact-match probability, for the RL tests.

``exact_match`` is computed exactly rather than sampled: the mean over prompts of
π(answer + EOS | prompt) at temperature 1, i.e. the probability that a sampled completion earns
reward 1.
"""

from __future__ import annotations

import torch

import llm_env
from llm_env.tasks import Task


def answer_batch(tokenizer, pairs: list[tuple[str, str]]):
    """Right-padded ids, mask and labels (-100 on prompt and padding) of ``prompt + answer + EOS``."""
    rows = []
    for prompt, answer in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((p + a, len(p)))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (row, n) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, n : len(row)] = torch.tensor(row[n:])
    return ids, mask, labels


def pretrain(task: Task, steps: int, lr: float = 3e-3, seed: int = 0):
    """A tiny GPT-2 after ``steps`` CE steps (batch 32) on the task's demonstrations."""
    tokenizer = task.tokenizer()
    model = llm_env.tiny_gpt2(tokenizer, n_layer=2, n_head=2, n_embd=64, n_positions=16, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    demos = list(task.demonstrations)
    for _ in range(steps):
        idx = torch.randint(len(demos), (32,), generator=gen)
        ids, mask, labels = answer_batch(tokenizer, [demos[i] for i in idx])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def exact_match(model, tokenizer, prompts: tuple[str, ...]) -> float:
    """Mean over ``prompts`` of π(correct answer + EOS | prompt), exactly."""
    pairs = [(p, str(sum(int(x) for x in p[:-1].split("+")))) for p in prompts]
    ids, mask, labels = answer_batch(tokenizer, pairs)
    log_probs = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
    targets = labels[:, 1:]
    picked = log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (picked * (targets >= 0)).sum(-1).exp().mean().item()
