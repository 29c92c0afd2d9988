"""What the offline agents (SFT, DPO, the Bradley–Terry reward model) share.

- ``load_examples``: rows from JSONL (through ``read_jsonl``, so errors name file, line, key) or
  from a list of tuples;
- ``encode_examples`` / ``pad_batch``: ``prompt + completion + <eos>`` token ids, right-padded per
  batch to the longest row (dynamic padding), with a mask of the tokens the loss reads;
- ``sequence_logprobs``: fp32 per-token log-probs from one forward pass;
- ``batch_schedule`` and ``offline_step``: a deterministic batch schedule, and one optimiser step
  on its batch — the loop around it is ``agents.common.run.Agent``'s.

Under ``accelerate launch`` (see ``agents.common.distributed``) ``batch_size`` is the total over
processes: each process computes the loss on its contiguous part of every batch of the one seeded
schedule, through the agent's DDP-wrapped forward; statistics are reduced over processes and
only the main process evaluates (its result is broadcast), logs and writes checkpoints.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from agents.common.config import check_positive
from agents.common.lora import causal_lm
from agents.common.policy import position_ids_from_mask
from agents.common.precision import autocast
from llm_env.tasks import read_jsonl


def check_offline_options(config) -> None:
    """The data options every offline config has, validated (names, values, ranges)."""
    check_positive("batch_size", config.batch_size)
    check_positive("epochs", config.epochs, float)
    check_positive("max_steps", config.max_steps, allow_zero=True)
    check_positive("max_length", config.max_length)
    if config.max_length < 2:
        raise ValueError(
            f"max_length must be >= 2 (a prompt token and <eos>), got {config.max_length}"
        )
    check_positive("eval_every", config.eval_every, allow_zero=True)


def load_examples(
    data: str | Path | Sequence[Sequence[str]], keys: Sequence[str], what: str
) -> tuple[list[tuple[str, ...]], list[dict]]:
    """``(tuples of the keys' values, full rows)`` from a JSONL path or a list of tuples/dicts."""
    if isinstance(data, (str, Path)):
        rows = read_jsonl(data, required=keys)
    else:
        rows = []
        for i, item in enumerate(data):
            row = dict(item) if isinstance(item, dict) else dict(zip(keys, item))
            missing = [k for k in keys if not isinstance(row.get(k), str)]
            if missing:
                raise ValueError(f"{what} example #{i}: missing or non-string {missing[0]!r}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{what}: the dataset is empty")
    return [tuple(r[k] for k in keys) for r in rows], rows


def load_preference_pairs(
    data: str | Path | Sequence, what: str
) -> tuple[list[tuple[str, str, str]], list[dict], int]:
    """``(prompt, chosen, rejected)`` triples, their full rows, and how many rows had
    ``chosen == rejected`` — those carry no preference and are skipped (with a warning)."""
    triples, rows = load_examples(data, ("prompt", "chosen", "rejected"), what)
    keep = [i for i, (_, c, r) in enumerate(triples) if c != r]
    skipped = len(triples) - len(keep)
    if skipped:
        warnings.warn(f"{what}: skipped {skipped} row(s) whose chosen == rejected", stacklevel=2)
    if not keep:
        raise ValueError(f"{what}: no usable pairs (all {skipped} rows have chosen == rejected)")
    return [triples[i] for i in keep], [rows[i] for i in keep], skipped


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int,
) -> list[tuple[list[int], int]]:
    """Per example ``(ids of prompt + completion + <eos>, number of prompt tokens)``.

    The completion's ids are what the policy would append after the env's prompt ids: those of
    ``prompt + completion`` past the prompt's own ids (the completion tokenised on its own when a
    token straddles the boundary). Rows longer than ``max_length`` keep at most the prompt's last
    ``max_length // 2`` tokens, then lose the end of the completion.
    """
    if not prompts:
        return []
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    joint_ids = tokenizer([p + c for p, c in zip(prompts, completions)], add_special_tokens=False)[
        "input_ids"
    ]
    completion_ids = [
        j[len(p) :] if j[: len(p)] == p else tokenizer(c, add_special_tokens=False)["input_ids"]
        for p, j, c in zip(prompt_ids, joint_ids, completions)
    ]
    rows = []
    for p, c in zip(prompt_ids, completion_ids):
        c = c + [eos]
        if len(p) + len(c) > max_length:
            p = p[-max(1, max_length // 2) :] if p else p
            c = c[: max_length - len(p)]
        rows.append((p + c, len(p)))
    return rows


def pad_batch(
    rows: Sequence[tuple[list[int], int]], pad_id: int, train_on_prompt: bool = False
) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row. Returns ``input_ids``/``attention_mask`` (B, L) and
    ``loss_mask`` (B, L - 1): 1 where token t+1 is scored (completion tokens, or every token
    after the first one when ``train_on_prompt``)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width - 1), dtype=torch.float32)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        first = 0 if train_on_prompt else max(n_prompt - 1, 0)
        loss_mask[i, first : len(ids) - 1] = 1.0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


# Architectures whose logits are exactly ``get_output_embeddings()(last_hidden_state)`` (no
# soft-capping or scaling): for them the LM head runs on the scored positions only.
HEAD_ON_SCORED_ONLY = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3"})


def sequence_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str = "fp32"
) -> torch.Tensor:
    """fp32 log π(token t+1 | tokens ≤ t) for every position, shape (B, L - 1), 0 where masked.

    The LM head and the log-softmax run only on the scored positions (not on prompt or pad
    tokens) for the architectures in ``HEAD_ON_SCORED_ONLY``; other models go through their
    full forward. ``model`` may be a LoRA policy or its ``BaseWeightsReference`` (``causal_lm``).
    """
    mask = batch["loss_mask"].bool()
    targets = batch["input_ids"][:, 1:][mask]
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": position_ids_from_mask(batch["attention_mask"]),
        "use_cache": False,
    }
    with autocast(precision), causal_lm(model) as lm:
        if getattr(lm.config, "model_type", None) in HEAD_ON_SCORED_ONLY:
            hidden = lm.base_model(**inputs).last_hidden_state[:, :-1]
            logits = lm.get_output_embeddings()(hidden[mask])  # (scored tokens, vocab)
        else:
            logits = lm(**inputs).logits[:, :-1][mask]
    logprobs = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    logprobs[mask] = -F.cross_entropy(logits.float(), targets, reduction="none")
    return logprobs


def batch_schedule(
    n: int, batch_size: int, epochs: float, max_steps: int, seed: int
) -> list[np.ndarray]:
    """Index arrays of every optimiser step: a fresh seeded permutation per epoch, so the
    schedule is a pure function of its arguments (``resume`` just skips the steps done)."""
    if n == 0:
        raise ValueError("the dataset is empty")
    check_positive("batch_size", batch_size)
    total = max(1, int(round(epochs * n)))
    order = np.concatenate(
        [np.random.default_rng([seed, e]).permutation(n) for e in range(-(-total // n))]
    )[:total]
    steps = [order[i : i + batch_size] for i in range(0, total, batch_size)]
    return steps[:max_steps] if max_steps > 0 else steps


def offline_step(agent, step: int) -> dict[str, float]:
    """One optimiser step of an offline agent on ``agent.schedule[step]``: ``agent.loss(part)``
    on this process's part of the batch, backward, clip, step (the model is the one named by
    ``agent.optimizers``' only key)."""
    (name,) = agent.optimizers
    model = agent._models()[name]
    model.train()
    batch = agent.schedule[step]
    part = agent.dist.split(batch)
    loss, stats = agent.loss(part)
    agent._check_finite("loss/total", loss.detach())
    # DDP averages the processes' gradients; weighting each part's mean loss by its share of
    # the batch makes that average the gradient of the whole batch's mean loss.
    (loss * (len(part) * agent.dist.world_size / len(batch))).backward()
    return {"loss/total": loss.item(), **stats, **agent._apply_gradients(name)}


def offline_schedule(n: int, config, world_size: int) -> list[np.ndarray]:
    """``batch_schedule`` for ``config``, without batches too small to give every process a row."""
    schedule = batch_schedule(n, config.batch_size, config.epochs, config.max_steps, config.seed)
    return [batch for batch in schedule if len(batch) >= world_size]
